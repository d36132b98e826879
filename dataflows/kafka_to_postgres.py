"""Blueprint "Land a Kafka topic in PostgreSQL, exactly once" as a Bytewax module.

``python -m bytewax.run waxflow.dataflows.kafka_to_postgres`` runs it (flow file:
``dataflows/flows/kafka_to_postgres.yaml``). It registers the task types it uses
(``waxflow.connectors.postgres``, ``waxflow.connectors.email``) before loading the flow.
Connection settings come from the environment (``$WAXFLOW_PG_URL``, the secret
``PG_PASSWORD``, the mail relay ``$WAXFLOW_SMTP_HOST``...; see the flow file's header).
"""

from __future__ import annotations

from pathlib import Path

from waxflow.connectors import email, postgres  # noqa: F401  (register the flow's task types)
from waxflow.dataflows import load_flow

FLOW_FILE = Path(__file__).parent / "flows" / "kafka_to_postgres.yaml"

flow = load_flow(FLOW_FILE)
