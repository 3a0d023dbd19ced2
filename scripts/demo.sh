#!/usr/bin/env bash
# Set everything up, then run the simulated-home demo with its live view.
# Extra arguments go to `vitalbridge demo` (e.g. --duration 30).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vitalbridge demo "$@"
