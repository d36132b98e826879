"""What every request handler shares: the index worker, the flow files, broker settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from waxflow.server.index_worker import IndexWorker
from waxflow.server.replays import FlowFiles


@dataclass
class ServerContext:
    """The server's shared state (built once by the ``server`` command or a test).

    ``kafka_conf`` is the client configuration for reading the broker (trigger records, lag)
    when the record's flow file is not known: the bootstrap servers and the security settings
    of ``$WAXFLOW_KAFKA_PROPERTIES`` (it may hold a password: never shown).
    """

    worker: IndexWorker
    flows: FlowFiles
    kafka_conf: dict[str, Any] = field(default_factory=dict)
    token_set: bool = False
    refresh_seconds: float = 5.0

    def conf_for(self, namespace: object, flow_id: object) -> dict[str, Any]:
        """Client configuration for a flow's records: its flow file's, else the server's."""
        known = self.flows.get(str(namespace), str(flow_id))
        group = known.consumer_group() if known is not None else None
        return group[2] if group is not None else dict(self.kafka_conf)


def context(request: Request) -> ServerContext:
    """The :class:`ServerContext` of the application serving ``request``."""
    ctx: ServerContext = request.app.state.waxflow
    return ctx
