"""Functions the share-group batch tests' flows call through ``core.Python``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def fail_new_records(context: Mapping[str, Any], marks: str) -> dict[str, Any]:
    """Fail a batch that holds a record never seen before (a marker file per record in the
    directory ``marks``, shared by all processes), after marking all of its records; a batch
    of records all seen before succeeds. Returns the batch's size and the process name."""
    from waxflow.connectors.storage import read_records

    records = list(read_records(context["trigger"]["uri"]))
    new = 0
    for r in records:
        mark = Path(marks) / f"{r['topic']}.{r['partition']}.{r['offset']}"
        if not mark.exists():
            mark.touch()
            new += 1
    if new:
        raise RuntimeError(f"{new} of {len(records)} records seen for the first time: this "
                           "batch fails on purpose")
    return {"n": len(records), "worker": os.environ.get("WAXFLOW_WORKER_NAME", "")}
