"""The metrics port of ``waxflow run``: ``/metrics``, ``/healthz`` and ``/readyz``.

- ``/metrics``: the Prometheus text format of :data:`waxflow.connectors.metrics.REGISTRY`.
- ``/healthz`` (liveness): 200 while the dataflow makes progress or is idle waiting for
  records; 503 when executions are in flight and none finished for ``stuck_after`` seconds
  (``--stuck-after``, ``$WAXFLOW_STUCK_AFTER``, default 300), or one execution has been in
  flight that long while others finish (its offset holds back every later commit): e.g. a
  task that hangs (a ``timeout`` abandons the attempt and the execution goes on, so only a
  hang without one, or longer than this, trips it) or a log delivery that never completes.
  Set it above the longest execution the flow may legitimately run, retries included.
- ``/readyz`` (readiness): 200 once this process consumes: a consumer of the trigger's
  topics reported one of its partitions in fetch state ``active`` (librdkafka statistics),
  for share groups once the share consumer's group session is up, for schedule flows once
  the dataflow runs; 503 before (compiling, waiting for the other cluster members, partitions
  not assigned yet), once a stop was requested (SIGTERM), and for a cluster member that got
  no partition (more workers than partitions).

The body is one line saying why. Each process of ``--processes N`` serves its own port
(``port + process index``): one registry per process, no shared state between processes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Literal

from waxflow.connectors import metrics, shutdown

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = logging.getLogger("waxflow.health")

DEFAULT_STUCK_AFTER = 300.0
#: how readiness is decided: trigger partitions fetched, share session up, dataflow running
ReadyRule = Literal["partitions", "share", "running"]


class Health:
    """Liveness and readiness of this process (thread-safe reads of metrics.STATE)."""

    def __init__(self, stuck_after: float = DEFAULT_STUCK_AFTER,
                 rule: ReadyRule = "partitions") -> None:
        self.stuck_after = stuck_after
        self.rule = rule
        self.running = False  # the dataflow started (set by the runner)

    def live(self) -> tuple[bool, str]:
        state = metrics.STATE
        now = time.monotonic()
        with state.lock:
            in_flight = len(state.running)
            oldest = min(state.running.values(), default=now)
            quiet = now - state.progress
        if not in_flight:
            return True, f"ok: idle, {state.done} executions done"
        if quiet > self.stuck_after:
            return False, (f"stuck: {in_flight} executions in flight (oldest started "
                           f"{now - oldest:.0f}s ago), none finished for {quiet:.0f}s "
                           f"(limit {self.stuck_after:g}s)")
        if now - oldest > self.stuck_after:  # the others go on; its offset holds commits
            return False, (f"stuck: an execution has been in flight for {now - oldest:.0f}s "
                           f"(limit {self.stuck_after:g}s) while {state.done} others finished; "
                           "its offset holds back the commits")
        return True, (f"ok: {in_flight} executions in flight, last progress {quiet:.1f}s ago, "
                      f"{state.done} done")

    def ready(self) -> tuple[bool, str]:
        if shutdown.requested():
            return False, f"not ready: stopping ({shutdown.requested()})"
        if not self.running:
            return False, "not ready: the dataflow has not started"
        if self.rule == "running":
            return True, "ready: the dataflow runs"
        if self.rule == "share":
            if metrics.group_up():
                return True, "ready: share-group session up"
            return False, "not ready: share-group session not up yet"
        parts = metrics.fetching_partitions()
        if parts:
            shown = ", ".join(f"{t}/{p}" for t, p in parts[:8])
            more = f" and {len(parts) - 8} more" if len(parts) > 8 else ""
            return True, f"ready: consuming {len(parts)} partitions ({shown}{more})"
        return False, "not ready: no partition of the trigger's topics assigned and fetched yet"


HEALTH = Health()


def serve(port: int, host: str | None = None) -> ThreadingHTTPServer:
    """Serve the metrics port in a daemon thread (``host``: ``$WAXFLOW_METRICS_HOST``, default
    all interfaces, as a container needs). Raises OSError when the port is taken."""
    from http.server import ThreadingHTTPServer  # (only a run with a metrics port needs it)

    bind = host if host is not None else os.environ.get("WAXFLOW_METRICS_HOST", "0.0.0.0")
    server = ThreadingHTTPServer((bind, port), _handler())
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def _handler() -> type[BaseHTTPRequestHandler]:
    """The request handler of the metrics port (made here: importing ``http.server`` and
    prometheus-client costs ~40 ms of CPU that a run without a metrics port does not
    spend)."""
    from http.server import BaseHTTPRequestHandler

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        server_version = "waxflow"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.prometheus().registry),
                           CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, why = HEALTH.live() if path == "/healthz" else HEALTH.ready()
                self._send(200 if ok else 503, (why + "\n").encode(),
                           "text/plain; charset=utf-8")
            elif path == "/":
                self._send(200, b"waxflow: /metrics /healthz /readyz\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            LOG.debug("%s " + format, self.address_string(), *args)

    return Handler
