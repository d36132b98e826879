"""A slow or failing record never stalls the others (pipelined executions), on the real broker.

Executions outlive the step that started them: a retry delay pauses only its own execution
(no thread held), later records of the same partition finish before it, and the source
commits the lowest unfinished offset per partition — so a SIGKILL with slow executions in
flight replays exactly what was not done, under the same ids. ``keyOrdering`` keeps each
key's executions in offset order while other keys overtake a slow one.
"""

from __future__ import annotations

import itertools
import os
import signal
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.flow_helpers import (
    LogWatcher,
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce,
    produce_json,
    run_flow,
    start_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets, read_all
from waxflow.execution import execution_id

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

FLOW = """\
id: no-stall
namespace: tests
triggers:
  - id: in
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
{extra}
tasks:
  - id: work
    type: core.Python
    function: tests.flow_funcs:flaky
    args: {{marks: "{marks}", every: {every}, slow_ms: {slow_ms}}}
    retry: {{type: constant, interval: PT4S, maxAttempts: 2}}
"""

#: a transactional Produce after the work: exactly once, executions finishing out of order
PRODUCE = """  - id: out
    type: kafka.Produce
    topic: {out}
    from: {{key: "{{{{ trigger.value.id }}}}", value: "{{{{ outputs.work.id }}}}"}}
"""


def _flow(tmp_path: Path, topic: str, group: str, *, every: int, slow_ms: float = 0,
          extra: str = "", produce_to: str | None = None) -> Path:
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    text = FLOW.format(topic=topic, group=group, marks=marks, every=every, slow_ms=slow_ms,
                       extra=extra)
    if produce_to is not None:
        text += PRODUCE.format(out=produce_to)
    return write_flow(tmp_path, text)


def _once_each(bootstrap: str, out: str, count: int) -> None:
    """The read_committed output holds each record's output exactly once."""
    keys = Counter(m.key() for m in read_all(bootstrap, out, isolation="read_committed"))
    assert set(keys) == {str(i).encode() for i in range(count)}, len(keys)
    dup = {k: n for k, n in keys.items() if n > 1}
    assert not dup, f"{len(dup)} outputs more than once, e.g. {list(dup.items())[:5]}"


def _end(doc: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(doc["endDate"])


def _done_and_committed(bootstrap: str, topic: str, group: str, log: str, parts: int
                        ) -> dict[str, dict[str, Any]]:
    """Every record has one SUCCESS history and the group committed the end offsets."""
    ends = end_offsets(bootstrap, topic, parts)
    assert committed(bootstrap, group, topic, parts) == ends
    latest = latest_by_id(log_documents(bootstrap, log))
    expected = {execution_id("tests", "no-stall", topic, p, o)
                for p, end in ends.items() for o in range(end)}
    assert set(latest) == expected
    assert {d["state"] for d in latest.values()} == {"SUCCESS"}
    return latest


@pytest.mark.parametrize("txn", [False, True], ids=["plain", "exactly-once-produce"])
def test_a_retry_delay_does_not_stall_the_other_records(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, txn: bool) -> None:
    parts, count, every = 4, 2000, 250  # ids 0, 250, ... 1750 fail once, retry after 4 s
    topic = new_topic(parts)
    out = new_topic(2) if txn else None
    group = f"g-{uuid.uuid4().hex[:8]}"
    log = new_log_topic()
    produce_json(bootstrap, topic, [{"id": i} for i in range(count)], partitions=parts)
    flow = _flow(tmp_path, topic, group, every=every, produce_to=out)

    result = run_flow(flow, flow_env(bootstrap, log, PYTHONPATH=str(REPO)), idle=3)
    assert result.returncode == 0, result.stderr[-3000:]

    latest = _done_and_committed(bootstrap, topic, group, log, parts)
    if out is not None:
        _once_each(bootstrap, out, count)
    retried = [d for d in latest.values() if len(d["taskRuns"][0]["attempts"]) == 2]
    assert len(retried) == count // every
    by_part: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for d in latest.values():
        by_part[d["trigger"]["partition"]].append(d)
    for doc in retried:
        attempts = doc["taskRuns"][0]["attempts"]
        assert [a["state"] for a in attempts] == ["FAILED", "SUCCESS"]
        part, offset = doc["trigger"]["partition"], doc["trigger"]["offset"]
        # records after it on its partition finished while it waited for its retry
        overtook = [d for d in by_part[part]
                    if d["trigger"]["offset"] > offset and _end(d) < _end(doc)]
        assert len(overtook) >= 20, (
            f"{part}@{offset}: only {len(overtook)} later records finished during its retry "
            "delay: the retry stalled its partition")


def test_key_ordering_keeps_each_key_in_order_while_other_keys_overtake(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    topic = new_topic(1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    log = new_log_topic()
    # key "k0" gets the slow records (ids multiple of 10 take 300 ms); 5 keys in all
    ids = list(range(200))
    keys: list[bytes | None] = [b"k0" if i % 10 == 0 else f"k{1 + i % 4}".encode()
                                for i in ids]
    produce(bootstrap, topic, [f'{{"id": {i}}}'.encode() for i in ids], keys=keys)
    flow = _flow(tmp_path, topic, group, every=10, slow_ms=300,
                 extra="    keyOrdering: true\n    maxConcurrency: 8")

    result = run_flow(flow, flow_env(bootstrap, log, PYTHONPATH=str(REPO)), idle=3)
    assert result.returncode == 0, result.stderr[-3000:]

    latest = _done_and_committed(bootstrap, topic, group, log, 1)
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in latest.values():
        by_key[d["trigger"]["key"]].append(d)
    assert sorted(by_key) == ["k0", "k1", "k2", "k3", "k4"]
    for key, docs in by_key.items():
        docs.sort(key=lambda d: d["trigger"]["offset"])
        for before, after in itertools.pairwise(docs):
            started = after["taskRuns"][0]["attempts"][0]["startDate"]
            assert _end(before) <= datetime.fromisoformat(started), (
                f"key {key}: offset {after['trigger']['offset']} started before "
                f"{before['trigger']['offset']} ended")
    slow_last = max(by_key["k0"], key=lambda d: d["trigger"]["offset"])
    fast_after = [d for k, docs in by_key.items() if k != "k0" for d in docs
                  if d["trigger"]["offset"] > 100]
    # the other keys did not wait for k0's 20 slow records (6 s in series)
    assert max(_end(d) for d in fast_after) < _end(slow_last)


@pytest.mark.parametrize(("scale", "txn"), [(("-w", "2"), False), (("--processes", "2"), False),
                                            (("-w", "2"), True), (("--processes", "2"), True)],
                         ids=["two-workers", "two-processes", "two-workers-exactly-once",
                              "two-processes-exactly-once"])
def test_sigkill_with_slow_executions_in_flight_replays_only_what_was_not_done(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        scale: tuple[str, str], txn: bool) -> None:
    """SIGKILL (the whole process group: the launcher and its cluster members with
    ``--processes``) twice while slow executions run out of order; with a transactional
    Produce, each record's output is then in the read_committed output exactly once."""
    parts, count = 2, 3000
    topic = new_topic(parts)
    out = new_topic(2) if txn else None
    group = f"g-{uuid.uuid4().hex[:8]}"
    log = new_log_topic()
    produce_json(bootstrap, topic, [{"id": i} for i in range(count)], partitions=parts)
    # one record in 100 takes 1.5 s: at any moment several are in flight, out of order
    flow = _flow(tmp_path, topic, group, every=100, slow_ms=1500, produce_to=out)
    env = flow_env(bootstrap, log, PYTHONPATH=str(REPO))

    watcher = LogWatcher(bootstrap, log)
    try:
        for threshold in (500, 1500):
            proc = start_flow(flow, env, *scale)
            try:
                watcher.wait_for(threshold, proc=proc)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # G1 at the moment of the kill: below each committed offset every record is done
            mid = committed(bootstrap, group, topic, parts)
            done_now = {d["id"] for d in log_documents(bootstrap, log) if d["terminal"]}
            for p, off in mid.items():
                missing = [o for o in range(max(off, 0))
                           if execution_id("tests", "no-stall", topic, p, o) not in done_now]
                assert not missing, f"partition {p} committed {off} but {missing[:5]} not done"
    finally:
        watcher.close()

    final = run_flow(flow, env, *scale, idle=3)
    assert final.returncode == 0, final.stderr[-2000:]
    _done_and_committed(bootstrap, topic, group, log, parts)
    if out is not None:
        _once_each(bootstrap, out, count)
