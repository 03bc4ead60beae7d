#!/usr/bin/env bash
# Creates .venv (if needed) and installs PromptSeg with its test requirements into it.
# torch is pinned first: on these machines torch==2.13.0 (CPU) is cached locally, and any other spec
# would pull gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip show -q torch >/dev/null || { echo "torch==2.13.0 could not be installed" >&2; exit 1; }
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import PromptSegLib, monai, transformers, slicerio, nilearn" || { echo "install failed" >&2; exit 1; }
