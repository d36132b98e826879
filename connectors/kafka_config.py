"""librdkafka client configuration from a flow's ``properties``.

Bootstrap servers: ``properties.bootstrap.servers``, else ``$WAXFLOW_BOOTSTRAP``, else that of
the ``$WAXFLOW_KAFKA_PROPERTIES`` file (:func:`default_properties`), else ``127.0.0.1:9092``.
User-set keys are never silently overwritten: where waxflow needs a value
(``enable.auto.commit=false`` for G1), a conflicting user value is an error.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from waxflow.connectors import metrics
from waxflow.connectors.java_properties import translate
from waxflow.errors import ConfigConflict, WaxflowError
from waxflow.expressions import register_secret, render_static

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


#: a file of client settings under every client's own (e.g. the security settings a schedule
#: flow's execution log needs: no trigger gives it properties)
PROPERTIES_ENV = "WAXFLOW_KAFKA_PROPERTIES"
_SENSITIVE = ("password", "secret")


class PropertiesFileError(WaxflowError):
    """``$WAXFLOW_KAFKA_PROPERTIES`` names a file that cannot be read."""


def default_properties() -> dict[str, str]:
    """The settings of ``$WAXFLOW_KAFKA_PROPERTIES`` (``key=value`` lines, ``#`` comments,
    templates with ``env.*``/``secret()`` allowed; ``waxflow broker start --secure`` writes
    one): defaults under each trigger's and task's ``properties``. Its ``bootstrap.servers``
    yields to ``$WAXFLOW_BOOTSTRAP``. Values of keys naming a password or secret are masked
    like secrets. Empty when the variable is unset."""
    path = os.environ.get(PROPERTIES_ENV)
    if not path:
        return {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PropertiesFileError(f"${PROPERTIES_ENV}: cannot read {path}: "
                                  f"{exc.strerror or type(exc).__name__}") from None
    out: dict[str, str] = {}
    for line in (ln.strip() for ln in lines):
        if line and not line.startswith("#") and "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            out[key] = value
            if any(word in key for word in _SENSITIVE):
                register_secret(value)
    if os.environ.get("WAXFLOW_BOOTSTRAP"):
        out.pop("bootstrap.servers", None)
    return out


def client_conf(properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Common client config: user properties (templates rendered once, with ``env.*`` and
    ``secret()`` only: ``sasl.password: "{{ secret('KAFKA_PASSWORD') }}"``) plus the
    resolved bootstrap servers; the client logs through :data:`KAFKA_LOG` (not straight to
    stderr)."""
    properties = translate(render_static({**default_properties(), **dict(properties or {})}))
    conf = dict(properties)
    conf["bootstrap.servers"] = bootstrap_servers(properties)
    conf.setdefault("logger", KAFKA_LOG)
    if metrics.STATE.enabled:  # consumer lag and fetched partitions (waxflow run --metrics-port)
        conf.setdefault("statistics.interval.ms", metrics.stats_interval_ms())
        conf.setdefault("stats_cb", metrics.kafka_stats)
    return conf


def require(conf: dict[str, Any], key: str, value: Any, why: str) -> None:
    """Set ``key`` to ``value`` unless the user set something else (then raise)."""
    if key in conf and str(conf[key]).lower() != str(value).lower():
        raise ConfigConflict(f"properties.{key}={conf[key]} is not allowed: {why}")
    conf[key] = value
