#!/usr/bin/env bash
# Install what waxflow needs into ./.venv (idempotent): Python deps pinned in pyproject.toml,
# and the Kafka broker jars (resolved from Maven Central once, cached in ~/.cache/waxflow).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  echo "setup: installing Java 17 and Maven (Debian packages)" >&2
  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
  rm -f .venv/.installed-*; touch "$stamp"
fi
.venv/bin/python -c "from waxflow.connectors.broker import resolve_jars; resolve_jars()"
