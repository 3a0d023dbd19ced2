#!/usr/bin/env bash
# Set everything up, then run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# pytest exits 5 when nothing was collected: that is a failure here too.
exec .venv/bin/python -m pytest -m "not slow" "$@"
