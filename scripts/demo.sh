#!/usr/bin/env bash
# The main job: start the local broker (if needed) and run the demo on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/waxflow broker start
.venv/bin/python -m waxflow.dataflows.demo
