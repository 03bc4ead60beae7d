#!/usr/bin/env bash
# Installs everything, then runs the test suite (real data: slicerio, nilearn, ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# dciodvfy (Debian's dicom3tools) validates the DICOM files the tests write
if ! command -v dciodvfy >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q dicom3tools >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dicom3tools >/dev/null 2>&1; }) \
    || echo "warning: dicom3tools could not be installed; DICOM validation tests will be skipped" >&2
fi
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
