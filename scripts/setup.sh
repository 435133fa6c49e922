#!/usr/bin/env bash
# Create .venv and install mistral-ft with its test tools. Idempotent: a second run only checks.
# CPU machines: torch is pinned to the 2.13.0 CPU build first, so pip never pulls CUDA wheels.
# GPU machines: install the CUDA build of torch into .venv first (see README, "GPU install"); the
# project's torch range accepts it and it is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
pip install --quiet --disable-pip-version-check -e ".[dev]"
