#!/usr/bin/env bash
# Set everything up, then run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# The suite the README and CI run is reproducible: hypothesis explores the same examples for the
# same commit (profile "ci", derandomized). Random exploration: HYPOTHESIS_PROFILE=dev or long.
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
# pytest exits 5 when nothing was collected: that is a failure here too.
exec .venv/bin/python -m pytest -m "not slow" "$@"
