"""Blueprint "Extract from an API and produce to Kafka" as a Bytewax module (``flow``)."""

from __future__ import annotations

from pathlib import Path

from waxflow.dataflows import load_flow

FLOW_FILE = Path(__file__).parent / "flows" / "api_to_kafka.yaml"

flow = load_flow(FLOW_FILE)
