#!/usr/bin/env bash
# Installs everything, then runs the test suite (real data: slicerio, nilearn, ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
