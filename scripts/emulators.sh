#!/usr/bin/env bash
# Local warehouse emulators for tests: BigQuery (bqemulator) and Snowflake (fakesnow).
#
#   scripts/emulators.sh {install|start|stop|status|restart} [bigquery|snowflake|all]
#
# Each emulator lives in its own venv under $WAXFLOW_EMU_DIR (default .waxflow/emu): their
# duckdb/sqlglot pins conflict, and the project's .venv keeps only the real clients. Both run
# as separate processes on loopback ports, each in its own session (setsid), so `stop` ends
# exactly the process group recorded in its pid file and nothing else.
#
# Guarantees:
# - install is idempotent: a stamp file named after the pins skips a second install;
# - start is idempotent: a running emulator (pid alive and answering) is left as it is;
# - start returns only once the emulator answers (exit 1 with the log tail otherwise);
# - runtime files (pid, log, env, data) live in $WAXFLOW_EMU_RUN_DIR (default: the venv dir),
#   so a test session can run its own emulators beside a developer's;
# - ports: $WAXFLOW_BQ_REST_PORT/$WAXFLOW_BQ_GRPC_PORT/$WAXFLOW_SF_PORT, else the ports of the
#   previous start in this run dir, else 19050/19060/19070; a port taken by another process
#   is replaced by a free one. What was chosen is written to <run>/bigquery.env
#   (WAXFLOW_BQ_ENDPOINT, WAXFLOW_BQ_PROJECT, WAXFLOW_BQ_GRPC_PORT) and <run>/snowflake.env
#   (WAXFLOW_SF_HOST, WAXFLOW_SF_PORT): `set -a; . <run>/bigquery.env` to reach them;
# - data: bqemulator keeps its data in <run>/bigquery-data, so a stop/start (the "emulator
#   went down" test) keeps datasets and tables; `stop bigquery --wipe` removes it. fakesnow's
#   server keeps everything in memory (its -d flag only applies to its patch mode): a restart
#   starts from an empty account.
set -euo pipefail
cd "$(dirname "$0")/.."

EMU=${WAXFLOW_EMU_DIR:-$PWD/.waxflow/emu}
RUN=${WAXFLOW_EMU_RUN_DIR:-$EMU}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
BQ_PINS="bqemulator==1.4.0 duckdb==1.5.5 duckdb-extensions==1.5.5 duckdb-extension-spatial==1.5.5 duckdb-extension-avro==1.5.5 sqlglot==30.11.0 numpy==2.4.6"
SF_PINS="fakesnow[server]==0.12.1 snowflake-connector-python==4.8.1 duckdb==2.0.1 sqlglot==30.22.0"
BQ_PROJECT=${WAXFLOW_BQ_PROJECT:-test-proj}
READY_TIMEOUT=${WAXFLOW_EMU_READY_TIMEOUT:-90}

log() { echo "emulators: $*" >&2; }

stamp_name() { echo "$1" | sha256sum | cut -c1-16; }

install_one() {  # name pins post-install-python
  local name=$1 pins=$2 post=${3:-}
  local venv="$EMU/$name-venv" stamp
  stamp="$venv/.installed-$(stamp_name "$pins")"
  [ -f "$stamp" ] && return 0
  log "installing $name ($pins)"
  mkdir -p "$EMU"
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check $pins
  [ -z "$post" ] || "$venv/bin/python" -c "$post"
  rm -f "$venv"/.installed-*
  touch "$stamp"
}

install_bigquery() {
  # bqemulator cannot download duckdb extensions here: load them once from the pip packages.
  install_one bigquery "$BQ_PINS" \
    "from duckdb_extensions import import_extension as i; i('spatial'); i('avro')"
}

install_snowflake() { install_one snowflake "$SF_PINS"; }

pid_alive() {  # pidfile
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

port_free() {  # port
  ! ss -Htln "sport = :$1" | grep -q .
}

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

previous() {  # name variable default: the port a previous start wrote to <run>/<name>.env
  local value=""
  if [ -f "$RUN/$1.env" ]; then
    value=$(sed -n "s/^$2=//p" "$RUN/$1.env"); value=${value##*:}
  fi
  echo "${value:-$3}"
}

pick_port() {  # preferred
  if port_free "$1"; then echo "$1"; else free_port; fi
}

wait_ready() {  # name pidfile check-command...
  local name=$1 pidfile=$2; shift 2
  local deadline=$(( $(date +%s) + READY_TIMEOUT ))
  while (( $(date +%s) < deadline )); do
    if ! pid_alive "$pidfile"; then
      log "$name exited during start; log tail:"; tail -n 30 "$RUN/$name.log" >&2; return 1
    fi
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.3
  done
  log "$name not ready after ${READY_TIMEOUT}s; log tail:"; tail -n 30 "$RUN/$name.log" >&2
  return 1
}

bq_ready() {  # rest port
  curl -sf -m 2 "http://127.0.0.1:$1/bigquery/v2/projects/$BQ_PROJECT/datasets"
}

sf_ready() {  # port: fakesnow answers HTTP (any status) once uvicorn is serving
  curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/" | grep -qv '^000$'
}

start_bigquery() {
  install_bigquery
  local pidfile="$RUN/bigquery.pid" rest grpc t0
  if pid_alive "$pidfile" && [ -f "$RUN/bigquery.env" ]; then
    # shellcheck disable=SC1091
    rest=$(. "$RUN/bigquery.env"; echo "${WAXFLOW_BQ_ENDPOINT##*:}")
    if bq_ready "$rest" >/dev/null 2>&1; then log "bigquery already running"; return 0; fi
  fi
  stop_one bigquery
  rest=$(pick_port "${WAXFLOW_BQ_REST_PORT:-$(previous bigquery WAXFLOW_BQ_ENDPOINT 19050)}")
  grpc=$(pick_port "${WAXFLOW_BQ_GRPC_PORT:-$(previous bigquery WAXFLOW_BQ_GRPC_PORT 19060)}")
  mkdir -p "$RUN/bigquery-data"
  t0=$(date +%s.%N)
  setsid "$EMU/bigquery-venv/bin/bqemulator" start --rest-host 127.0.0.1 --rest-port "$rest" \
    --grpc-host 127.0.0.1 --grpc-port "$grpc" --project "$BQ_PROJECT" --persistent \
    --data-dir "$RUN/bigquery-data" >"$RUN/bigquery.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_ready bigquery "$pidfile" bq_ready "$rest" || { stop_one bigquery; return 1; }
  printf 'WAXFLOW_BQ_ENDPOINT=http://127.0.0.1:%s\nWAXFLOW_BQ_PROJECT=%s\nWAXFLOW_BQ_GRPC_PORT=%s\n' \
    "$rest" "$BQ_PROJECT" "$grpc" >"$RUN/bigquery.env"
  log "bigquery ready on 127.0.0.1:$rest (pid $(cat "$pidfile")) in $(
    "$PY" -c "import time; print(round(time.time()-$t0, 1))")s"
}

start_snowflake() {
  install_snowflake
  local pidfile="$RUN/snowflake.pid" port t0
  if pid_alive "$pidfile" && [ -f "$RUN/snowflake.env" ]; then
    # shellcheck disable=SC1091
    port=$(. "$RUN/snowflake.env"; echo "$WAXFLOW_SF_PORT")
    if sf_ready "$port"; then log "snowflake already running"; return 0; fi
  fi
  stop_one snowflake
  port=$(pick_port "${WAXFLOW_SF_PORT:-$(previous snowflake WAXFLOW_SF_PORT 19070)}")
  mkdir -p "$RUN"
  t0=$(date +%s.%N)
  setsid "$EMU/snowflake-venv/bin/fakesnow" -s --host 127.0.0.1 -p "$port" \
    >"$RUN/snowflake.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_ready snowflake "$pidfile" sf_ready "$port" || { stop_one snowflake; return 1; }
  printf 'WAXFLOW_SF_HOST=127.0.0.1\nWAXFLOW_SF_PORT=%s\n' "$port" >"$RUN/snowflake.env"
  log "snowflake ready on 127.0.0.1:$port (pid $(cat "$pidfile")) in $(
    "$PY" -c "import time; print(round(time.time()-$t0, 1))")s"
}

stop_one() {  # name: TERM then KILL the process group of the recorded pid, nothing else
  local name=$1 pidfile="$RUN/$1.pid" pid i
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "$name stopped (pid $pid)"
  fi
  rm -f "$pidfile"
}

status_one() {
  local name=$1
  if pid_alive "$RUN/$name.pid"; then
    echo "$name: running (pid $(cat "$RUN/$name.pid")) $(tr '\n' ' ' <"$RUN/$name.env" 2>/dev/null)"
  else
    echo "$name: stopped"; return 3
  fi
}

cmd=${1:-status}; which=${2:-all}; wipe=${3:-}
case $which in
  bigquery|snowflake) targets=("$which") ;;
  all) targets=(bigquery snowflake) ;;
  *) echo "usage: $0 {install|start|stop|restart|status} [bigquery|snowflake|all] [--wipe]" >&2
     exit 2 ;;
esac
rc=0
for t in "${targets[@]}"; do
  case $cmd in
    install) "install_$t" ;;
    start) "start_$t" ;;
    stop) stop_one "$t"; [ "$wipe" != --wipe ] || rm -rf "$RUN/$t-data" "$RUN/$t.env" ;;
    restart) stop_one "$t"; "start_$t" ;;
    status) status_one "$t" || rc=$? ;;
    *) echo "usage: $0 {install|start|stop|restart|status} [bigquery|snowflake|all]" >&2
       exit 2 ;;
  esac
done
exit "$rc"
