"""Blueprint "Emit an event when a pipeline finishes" (pipeline_notify), exposing ``flow``."""

from __future__ import annotations

from pathlib import Path

from waxflow.dataflows import load_flow

FLOW_FILE = Path(__file__).parent / "flows" / "pipeline_notify.yaml"

flow = load_flow(FLOW_FILE)
