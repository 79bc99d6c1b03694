#!/usr/bin/env bash
# Run every test: lint (ruff, 88 columns), dlib's unit and property tests (with coverage), nbval on
# every chapter notebook, a strict book build (warnings are errors) and a check of the rendered
# HTML. Any failure, and "no tests collected" (pytest exit 5), fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh
start=$SECONDS

echo "== lint (ruff, 88 columns: dlib, tests, scripts, benchmarks, chapters) =="
ruff check dlib tests scripts benchmarks chapters

echo "== 1/3 dlib unit tests =="
python -m pytest tests -n 2 -q -p no:cacheprovider --cov=dlib --cov-report=term --cov-fail-under=85

echo "== 2/3 notebooks (nbval: every cell must run; tagged outputs must match) =="
python -m pytest chapters -n 2 --dist loadfile -p no:cacheprovider --nbval-lax --nbval-current-env \
  --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=600 -q

echo "== 3/3 strict book build =="
rm -rf _build/html _build/.doctrees
jupyter-book build . -W -n --keep-going

echo "== rendered HTML (no raw TeX, \$ or MyST roles in text; every \$\$ block is display math) =="
python scripts/check_html.py

echo "All tests passed in $((SECONDS - start)) s."
