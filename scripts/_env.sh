# Sourced by scripts/build.sh and scripts/test.sh: create the virtual environment .venv (or $VENV)
# and install everything pinned, once per change of pyproject.toml or requirements/constraints.txt.
# torch==2.13.0 is named in the SAME pip command as the package: a separate, unpinned install would
# pull a multi-GB CUDA build.
set -euo pipefail
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat pyproject.toml requirements/constraints.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "Installing into $VENV (first run takes a few minutes) ..."
  "$VENV/bin/python" -m pip install -q --upgrade "pip>=24"
  "$VENV/bin/python" -m pip install -q "torch==2.13.0" -e ".[test,book]" -c requirements/constraints.txt
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
export PATH="$PWD/$VENV/bin:$PATH"
# One torch thread everywhere: checked numbers then reproduce bit for bit.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYDEVD_DISABLE_FILE_VALIDATION=1
