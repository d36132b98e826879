#!/usr/bin/env bash
# Lint, type-check and run every test (unit + integration on a real Kafka broker).
# Uses the broker at $WAXFLOW_BOOTSTRAP if set, else the test session starts its own.
# Extra arguments go to pytest (e.g. -m "not integration" for a quick unit run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/test-deps.sh   # Prometheus, openssl, PostgreSQL, MariaDB, Chromium, Java 21+
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache   # the layer contracts in pyproject.toml
.venv/bin/pytest "$@"
