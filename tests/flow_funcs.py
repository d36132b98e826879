"""Functions that test flows call through ``core.Python``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


def slow(context: Mapping[str, Any], ms: float = 20.0) -> dict[str, Any]:
    """Simulated work: sleep ``ms`` and echo the record id."""
    time.sleep(ms / 1000.0)
    value = context["trigger"].get("value")
    return {"id": value.get("id") if isinstance(value, dict) else None}


def whoami(context: Mapping[str, Any], ms: float = 0.0, marks: str = "",
           again_ms: float | None = None) -> dict[str, Any]:
    """Share-group tests: name the process that runs the execution (``$WAXFLOW_WORKER_NAME``)
    and echo the record id, after ``ms`` of simulated work. With ``marks`` (a directory), a
    file ``<worker>.<id>`` is created when the work starts, and a record some process has
    started before works ``again_ms`` instead (when given)."""
    import os
    from pathlib import Path

    value = context["trigger"].get("value")
    rid = value.get("id") if isinstance(value, dict) else None
    worker = os.environ.get("WAXFLOW_WORKER_NAME", str(os.getpid()))
    if marks:
        seen = any(Path(marks).glob(f"*.{rid}"))
        (Path(marks) / f"{worker}.{rid}").touch()
        if seen and again_ms is not None:
            ms = again_ms
    if ms:
        time.sleep(ms / 1000.0)
    return {"worker": worker, "id": rid}


def fail_once(context: Mapping[str, Any], marks: str) -> dict[str, Any]:
    """Fail the first time a record id is seen (a marker file per id in the directory
    ``marks``, shared by all processes), succeed on every later call."""
    from pathlib import Path

    rid = context["trigger"]["value"]["id"]
    mark = Path(marks) / f"{rid}"
    try:
        mark.touch(exist_ok=False)
    except FileExistsError:
        return {"id": rid, "attempt": "again"}
    raise RuntimeError(f"record {rid}: first attempt fails on purpose")


def flaky(context: Mapping[str, Any], marks: str, every: int = 0,
          slow_ms: float = 0.0) -> dict[str, Any]:
    """Records whose id is a multiple of ``every`` (none when 0) fail their first attempt
    (a marker file per id in ``marks``) or, with ``slow_ms``, take that long instead."""
    from pathlib import Path

    rid = int(context["trigger"]["value"]["id"])
    if every and rid % every == 0:
        if slow_ms:
            time.sleep(slow_ms / 1000.0)
            return {"id": rid, "slow": True}
        try:
            (Path(marks) / str(rid)).touch(exist_ok=False)
        except FileExistsError:
            return {"id": rid, "attempt": "again"}
        raise RuntimeError(f"record {rid}: first attempt fails on purpose")
    return {"id": rid}
