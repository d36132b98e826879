"""Functions that child flows of subflow tests call through ``core.Python``: they show that
ForEachItem children run at the same time (a barrier only they can pass together) and how
many do at most, without measuring time (a timeout only stops a test that would hang)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

_LOCK = threading.Lock()
_BARRIERS: dict[str, threading.Barrier] = {}
_DONE: dict[str, threading.Event] = {}
#: group -> children of it running now / at most at once
ACTIVE: dict[str, int] = {}
PEAK: dict[str, int] = {}


def _barrier(group: str, parties: int) -> threading.Barrier:
    with _LOCK:
        return _BARRIERS.setdefault(group, threading.Barrier(parties))


def _done(key: str) -> threading.Event:
    with _LOCK:
        return _DONE.setdefault(key, threading.Event())


def together(context: Mapping[str, Any], group: str, n: int, parties: int,
             first_waits_for: int = 0, timeout: float = 60.0) -> dict[str, Any]:
    """Child ``n`` of ``group``: counts itself running, waits until ``parties`` children of
    the group are at the barrier together (raises if they never are), and, for ``n == 1``
    with ``first_waits_for``, until that child has ended, so that the first child ends
    last."""
    with _LOCK:
        ACTIVE[group] = ACTIVE.get(group, 0) + 1
        PEAK[group] = max(PEAK.get(group, 0), ACTIVE[group])
    try:
        if parties > 1:
            _barrier(group, parties).wait(timeout)
        if (n == 1 and first_waits_for
                and not _done(f"{group}/{first_waits_for}").wait(timeout)):
            raise RuntimeError(f"child {first_waits_for} never ended")
        return {"n": n}
    finally:
        with _LOCK:
            ACTIVE[group] -= 1
        _done(f"{group}/{n}").set()
