#!/usr/bin/env bash
# Build the rendered book (HTML) from the notebooks' stored outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh
jupyter-book build . -W -n --keep-going
echo "The book is at: $PWD/_build/html/index.html"
