"""librdkafka client configuration from a flow's ``properties``.

Bootstrap servers: ``properties.bootstrap.servers``, else ``$WAXFLOW_BOOTSTRAP``, else
``127.0.0.1:9092``. User-set keys are never silently overwritten: where waxflow
needs a value (``enable.auto.commit=false`` for G1), a conflicting user value is an error.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from waxflow.errors import ConfigConflict
from waxflow.expressions import render_static

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def bootstrap_servers(properties: Mapping[str, Any] | None = None) -> str:
    if properties and properties.get("bootstrap.servers"):
        return str(properties["bootstrap.servers"])
    return os.environ.get("WAXFLOW_BOOTSTRAP", DEFAULT_BOOTSTRAP)


class RepeatSummary(logging.Filter):
    """Passes the first of a run of alike client log lines, then at most one line per
    ``window`` seconds saying how many were held back (a broker outage makes librdkafka log
    every failed connection attempt: hundreds of lines a minute otherwise)."""

    def __init__(self, window: float = 30.0) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[int, str], list[float]] = {}  # key -> [first shown, held]
        self._lock = threading.Lock()

    @staticmethod
    def _key(record: logging.LogRecord) -> tuple[int, str]:
        return record.levelno, _DIGITS.sub("#", record.getMessage())[:120]

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = self._key(record), time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or now - seen[0] >= self.window:
                held = int(seen[1]) if seen is not None else 0
                self._seen[key] = [now, 0]
                if held:
                    record.msg = f"{record.getMessage()} (and {held} alike in the last " \
                                 f"{self.window:g}s)"
                    record.args = ()
                return True
            seen[1] += 1
            return False


_DIGITS = re.compile(r"\d+")

#: librdkafka's own log, through Python logging (``WAXFLOW_LOG_LEVEL``), repeats summarised
KAFKA_LOG = logging.getLogger("waxflow.kafka")
KAFKA_LOG.addFilter(RepeatSummary())


def client_conf(properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Common client config: user properties (templates rendered once, with ``env.*`` and
    ``secret()`` only: ``sasl.password: "{{ secret('KAFKA_PASSWORD') }}"``) plus the
    resolved bootstrap servers; the client logs through :data:`KAFKA_LOG` (not straight to
    stderr)."""
    properties = render_static(dict(properties or {}))
    conf = dict(properties)
    conf["bootstrap.servers"] = bootstrap_servers(properties)
    conf.setdefault("logger", KAFKA_LOG)
    return conf


def require(conf: dict[str, Any], key: str, value: Any, why: str) -> None:
    """Set ``key`` to ``value`` unless the user set something else (then raise)."""
    if key in conf and str(conf[key]).lower() != str(value).lower():
        raise ConfigConflict(f"properties.{key}={conf[key]} is not allowed: {why}")
    conf[key] = value
