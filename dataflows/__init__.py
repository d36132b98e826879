"""waxflow flows: load a flow file and get a Bytewax dataflow.

``python -m bytewax.run "waxflow.dataflows:load_flow('flows/x.yaml')"`` runs any flow.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (an annotation only: the launcher and `validate` need no bytewax)
    from bytewax.dataflow import Dataflow


def load_flow(path: str | Path, stop_when_idle: float | None = None,
              max_ticks: int | None = None,
              inputs: Mapping[str, str] | None = None) -> Dataflow:
    """Parse and validate the flow file at ``path`` and compile it into a Dataflow.

    Raises :class:`waxflow.errors.FlowError` (file:line:col, field, expectation) when the
    flow does not validate. ``stop_when_idle`` (seconds; default ``$WAXFLOW_STOP_WHEN_IDLE``)
    ends the dataflow once no record arrived for that long and all work is committed;
    ``max_ticks`` ends a schedule flow after that many ticks; ``inputs`` are values of the
    flow's inputs for every execution (the others take their defaults; a value that does
    not fit raises :class:`~waxflow.flow.InputError`). Takes the flow's instance
    lock first (one running instance per flow and consumer group: a second one raises
    :class:`~waxflow.connectors.instance_lock.InstanceConflict`).
    """
    import os

    from waxflow.dataflows.compiler import RunOptions, compile_flow, hold_instance
    from waxflow.dataflows.spec import parse_flow

    if stop_when_idle is None and os.environ.get("WAXFLOW_STOP_WHEN_IDLE"):
        stop_when_idle = float(os.environ["WAXFLOW_STOP_WHEN_IDLE"])
    flow = parse_flow(path)
    hold_instance(flow)
    return compile_flow(flow, RunOptions(stop_when_idle=stop_when_idle, max_ticks=max_ticks,
                                         inputs=dict(inputs or {})))
