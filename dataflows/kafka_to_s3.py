"""Blueprint "Bridge Kafka to S3" as a Bytewax module.

``python -m bytewax.run waxflow.dataflows.kafka_to_s3`` runs it (flow file:
``dataflows/flows/kafka_to_s3.yaml``). It needs the ``s3.Upload`` task type registered
(``waxflow.connectors.s3``) and an S3 endpoint (``$WAXFLOW_S3_ENDPOINT`` for a local one).
"""

from __future__ import annotations

from pathlib import Path

from waxflow.dataflows import load_flow

FLOW_FILE = Path(__file__).parent / "flows" / "kafka_to_s3.yaml"

flow = load_flow(FLOW_FILE)
