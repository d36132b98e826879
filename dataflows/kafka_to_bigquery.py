"""Blueprint "Stream a Kafka topic into BigQuery" as a Bytewax module.

``python -m bytewax.run waxflow.dataflows.kafka_to_bigquery`` runs it (flow file:
``dataflows/flows/kafka_to_bigquery.yaml``). It registers the task types it uses
(``waxflow.connectors.bigquery``, ``waxflow.connectors.dbt``,
``waxflow.connectors.notify``) before loading the flow.
It talks to the real service, or to a local emulator when
``$WAXFLOW_BQ_ENDPOINT`` is set (``scripts/emulators.sh start bigquery``).
"""

from __future__ import annotations

from pathlib import Path

from waxflow.connectors import bigquery, dbt, notify  # noqa: F401  (register the flow's task types)
from waxflow.dataflows import load_flow

FLOW_FILE = Path(__file__).parent / "flows" / "kafka_to_bigquery.yaml"

flow = load_flow(FLOW_FILE)
