"""The Kafka client settings of the history side: ``waxflow executions`` and ``waxflow server``.

They read the execution log with the settings the jobs use for the clients no trigger
configures: the connection and security part of ``$WAXFLOW_KAFKA_PROPERTIES``
(:func:`waxflow.connectors.kafka_config.client_conf`: templates rendered, password values
registered as secrets, so they are masked wherever secrets are). Bootstrap servers:
``--bootstrap``, else ``$WAXFLOW_BOOTSTRAP``, else the file's ``bootstrap.servers``, else
``127.0.0.1:9092``. The index keeps its own consumer settings over these
(:class:`waxflow.recovery.index.ExecutionIndex`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from waxflow.connectors.kafka_config import PROPERTIES_ENV, client_conf
from waxflow.connectors.kafka_errors import KafkaAccessError, check_access
from waxflow.errors import WaxflowError
from waxflow.expressions import ExpressionError, SecretError
from waxflow.recovery.index import IndexAccessError

#: the settings of the properties file the history's clients take: how to reach the cluster
#: and who to be there (not the jobs' producer/consumer tuning, nor ``logger``/``stats_cb``)
CLIENT_KEYS = ("security.protocol", "sasl.", "ssl.", "client.id", "client.dns",
               "broker.address.", "enable.ssl", "socket.", "connections.max.idle.ms",
               "reconnect.backoff", "retry.backoff", "api.version", "broker.version.fallback",
               "client.rack")


class HistoryClientError(WaxflowError, ValueError):
    """``$WAXFLOW_KAFKA_PROPERTIES`` cannot be turned into client settings (a template that
    cannot be rendered, e.g. an undefined secret); one line, no secret."""


@dataclass(frozen=True)
class HistoryClient:
    """Where and how the history reads the log. ``conf`` holds the password when the
    properties file has one: hand it to clients, never print it (``repr`` leaves it out)."""

    bootstrap: str
    conf: dict[str, Any] = field(default_factory=dict, repr=False)

    def with_bootstrap(self) -> dict[str, Any]:
        """``conf`` plus ``bootstrap.servers``: a complete client configuration."""
        return {**self.conf, "bootstrap.servers": self.bootstrap}


def history_client(bootstrap: str | None = None) -> HistoryClient:
    """The history's client settings (``bootstrap``: ``--bootstrap``, which wins over the
    rest). Raises :class:`HistoryClientError` or ``PropertiesFileError`` (one line)."""
    try:
        full = client_conf()
    except (ExpressionError, SecretError) as exc:
        raise HistoryClientError(
            f"${PROPERTIES_ENV} ({os.environ.get(PROPERTIES_ENV)}): {exc}") from None
    return HistoryClient(bootstrap=bootstrap or str(full["bootstrap.servers"]),
                         conf=security_part(full))


def security_part(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``conf`` that say how to reach the cluster and who to be there."""
    return {k: v for k, v in conf.items() if k.startswith(CLIENT_KEYS)}


def explain_refusal(client: HistoryClient, exc: IndexAccessError, *,
                    timeout: float = 5.0) -> str:
    """One line for a cluster that refused the history's client: the access check the jobs
    use (naming the principal and the topic, e.g. ``User:ops (SCRAM-SHA-512) is not authorized
    to READ topic waxflow.executions``), else the index's own message."""
    try:
        check_access(client.with_bootstrap(), f"reading the execution log {exc.topic}",
                     read=[exc.topic], timeout=timeout)
    except KafkaAccessError as refused:
        return str(refused)
    return str(exc)
