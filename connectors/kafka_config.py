"""librdkafka client configuration from a flow's ``properties``.

Bootstrap servers: ``properties.bootstrap.servers``, else ``$WAXFLOW_BOOTSTRAP``, else
``127.0.0.1:9092``. User-set keys are never silently overwritten: where waxflow
needs a value (``enable.auto.commit=false`` for G1), a conflicting user value is an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from waxflow.errors import ConfigConflict

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def bootstrap_servers(properties: Mapping[str, Any] | None = None) -> str:
    if properties and properties.get("bootstrap.servers"):
        return str(properties["bootstrap.servers"])
    return os.environ.get("WAXFLOW_BOOTSTRAP", DEFAULT_BOOTSTRAP)


def client_conf(properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Common client config: user properties plus the resolved bootstrap servers."""
    conf = {k: v for k, v in (properties or {}).items()}
    conf["bootstrap.servers"] = bootstrap_servers(properties)
    return conf


def require(conf: dict[str, Any], key: str, value: Any, why: str) -> None:
    """Set ``key`` to ``value`` unless the user set something else (then raise)."""
    if key in conf and str(conf[key]).lower() != str(value).lower():
        raise ConfigConflict(f"properties.{key}={conf[key]} is not allowed: {why}")
    conf[key] = value
