"""Blueprint "Emit an event when a pipeline finishes" (pipeline_done), exposing ``flow``."""

from __future__ import annotations

from pathlib import Path

from waxflow.dataflows import load_flow

FLOW_FILE = Path(__file__).parent / "flows" / "pipeline_done.yaml"

flow = load_flow(FLOW_FILE)
