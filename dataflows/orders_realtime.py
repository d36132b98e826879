"""Blueprint "Start a flow for every Kafka record" as a Bytewax module.

``python -m bytewax.run waxflow.dataflows.orders_realtime`` runs it (flow file:
``dataflows/flows/orders_realtime.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from waxflow.dataflows import load_flow

FLOW_FILE = Path(__file__).parent / "flows" / "orders_realtime.yaml"

flow = load_flow(FLOW_FILE)
