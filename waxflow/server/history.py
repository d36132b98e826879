"""The queries the pages and the API ask of the execution index, in one place.

Every function takes the :class:`ExecutionIndex` (on the index thread, see
:mod:`.index_worker`) and returns plain JSON-able values: what ``/api/`` returns is what the
pages render. The index is the same query layer ``waxflow executions`` uses.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from waxflow.recovery.index import ExecutionIndex, normalize_date
from waxflow.server.filters import LEVELS, ExecutionFilter

_LEVEL_RANK = {name: i for i, name in enumerate(LEVELS)}


def executions(index: ExecutionIndex, flt: ExecutionFilter, *, limit: int,
               offset: int) -> dict[str, Any]:
    """One page of executions (newest first) and the counts by state for the filters."""
    query = flt.query()
    counts = index.count(**query)
    items = index.list(**query, limit=limit, offset=offset)
    return {"items": items, "counts": counts, "total": sum(counts.values()),
            "limit": limit, "offset": offset}


def histogram(index: ExecutionIndex, flt: ExecutionFilter, *, bucket_seconds: int = 60,
              recent: timedelta | None = None) -> list[dict[str, Any]]:
    """Executions per bucket and state, oldest first: ``{"bucket", "state", "count"}``
    (the state filter does not apply: the chart shows every state).

    ``recent``: without since/until filters, only that long up to the newest execution's
    start (the page's chart: a bounded query however long the history)."""
    q = flt.query()
    since, until = q["since"], q["until"]
    if recent is not None and since is None and until is None:
        newest = index.list(flow=q["flow"], topic=q["topic"], limit=1)
        start = normalize_date(newest[0].get("startDate")) if newest else None
        if start is not None:
            end = datetime.strptime(start, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            since, until = end - recent, end + timedelta(seconds=bucket_seconds)
    return index.histogram(flow=q["flow"], topic=q["topic"], since=since, until=until,
                           bucket_seconds=bucket_seconds)


def flows(index: ExecutionIndex) -> list[dict[str, Any]]:
    """One summary per (namespace, flow) seen (see the index's ``flows``)."""
    return index.flows()


def execution(index: ExecutionIndex, exec_id: str) -> dict[str, Any] | None:
    """The execution's document with ``runs``, ``logs`` (empty when the document has none)
    and ``downstream`` (summaries of the executions its produced records triggered)."""
    doc = index.show(exec_id)
    if doc is None:
        return None
    doc.setdefault("logs", [])
    doc["downstream"] = index.downstream(str(doc["id"]))
    return doc


def trace(index: ExecutionIndex, topic: str, partition: int, offset: int
          ) -> list[dict[str, Any]]:
    """What happened to one record (see the index's ``trace``)."""
    return index.trace(topic, partition, offset)


def logs_at_least(logs: list[dict[str, Any]], level: str) -> list[dict[str, Any]]:
    """The log lines at ``level`` or above (unknown levels are kept)."""
    floor = _LEVEL_RANK[level]
    return [ln for ln in logs
            if _LEVEL_RANK.get(str(ln.get("level", "")).upper(), len(LEVELS)) >= floor]
