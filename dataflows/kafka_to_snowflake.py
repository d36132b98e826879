"""Blueprint "Stream a Kafka topic into Snowflake" as a Bytewax module.

``python -m bytewax.run waxflow.dataflows.kafka_to_snowflake`` runs it (flow file:
``dataflows/flows/kafka_to_snowflake.yaml``). It registers the task types it uses
(``waxflow.connectors.snowflake``, ``waxflow.connectors.dbt``,
``waxflow.connectors.notify``) before loading the flow.
It talks to the real service, or to a local emulator when
``$WAXFLOW_SF_HOST``/``$WAXFLOW_SF_PORT`` is set (``scripts/emulators.sh start snowflake``).
"""

from __future__ import annotations

from pathlib import Path

from waxflow.connectors import dbt, notify, snowflake  # noqa: F401  (register the flow's task types)
from waxflow.dataflows import load_flow

FLOW_FILE = Path(__file__).parent / "flows" / "kafka_to_snowflake.yaml"

flow = load_flow(FLOW_FILE)
