#!/usr/bin/env bash
# From a fresh clone: install, build the tiny offline model, fine-tune it with recipes/quickstart.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
[ -f models/tiny-mistral/config.json ] || mistral-ft tiny-model models/tiny-mistral
mistral-ft train recipes/quickstart.yaml "$@"
