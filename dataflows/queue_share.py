"""Blueprint "Work a topic as a queue with share groups" as a Bytewax module.

``python -m bytewax.run waxflow.dataflows.queue_share`` runs it (flow file:
``dataflows/flows/queue_share.yaml``); start it several times to add competing consumers.
"""

from __future__ import annotations

from pathlib import Path

from waxflow.dataflows import load_flow

FLOW_FILE = Path(__file__).parent / "flows" / "queue_share.yaml"

flow = load_flow(FLOW_FILE)
