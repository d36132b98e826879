"""Share groups, pipelined (issue 18): a slow or retrying record holds only its own batch.

A share consumer cannot poll again before every record of its last batch is acknowledged,
so a worker may read through several share-group members (``$WAXFLOW_SHARE_MEMBERS``, 1 by
default): a batch held up by a slow record holds one member while the others go on. A
retry that would outlive the record lock (1 s on the test broker) RELEASEs the record
instead of holding the batch: the broker delivers it again (same execution id, a new run).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tests.flow_helpers import finish, flow_env, log_documents, run_flow, start_flow
from tests.integration.test_share_groups import (
    REPO,
    ack_summary,
    ids_json,
    log_topic,
    produce_small_batches,
    share_flow,
)
from tests.kafka_helpers import read_all

pytestmark = pytest.mark.integration

#: the broker's default ``group.share.heartbeat.interval.ms`` (the test broker keeps it)
HEARTBEAT_S = 5.0


def _when(doc: dict[str, Any], field: str) -> float:
    return datetime.fromisoformat(doc[field]).timestamp()


def _logged(bootstrap: str, log: str) -> bool:
    """Whether a terminal document is in the log yet (a new topic's leader may not be)."""
    try:
        return any(d["terminal"] for d in log_documents(bootstrap, log))
    except KafkaException:
        return False


def _rid(doc: dict[str, Any]) -> int:
    return int(doc["taskRuns"][0]["outputs"]["id"])


def test_a_retry_past_the_lock_is_released_not_waited_for(
        bootstrap: str, admin: AdminClient, new_topic: Callable[..., str],
        tmp_path: Path) -> None:
    """Records 0, 10, …, 90 fail their first attempt; the 4 s retry would outlive the 1 s
    record lock, so each is RELEASEd (its first run's document says so) and its second
    delivery succeeds; no retry ran in place."""
    topic, group, log = new_topic(1), f"share-{uuid.uuid4().hex[:8]}", log_topic(admin)
    marks = tmp_path / "marks"
    marks.mkdir()
    flow = share_flow(tmp_path, topic, group, f"""\
tasks:
  - id: work
    type: core.Python
    function: "tests.flow_funcs:flaky"
    args: {{marks: "{marks}", every: 10}}
    retry: {{type: constant, interval: PT4S, maxAttempts: 2}}
""")
    produce_small_batches(bootstrap, topic, ids_json(list(range(100))))

    result = run_flow(flow, flow_env(bootstrap, log, PYTHONPATH=str(REPO),
                                     WAXFLOW_LOG_LEVEL="INFO"), idle=4, timeout=180)

    assert result.returncode == 0, result.stderr[-3000:]
    docs = log_documents(bootstrap, log)
    success: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for d in docs:
        if d["state"] == "SUCCESS":
            success[d["taskRuns"][0]["outputs"]["id"]].append(d)
    assert sorted(success) == list(range(100))
    flaky = set(range(0, 100, 10))
    for rid in flaky:
        history = [d for d in docs if d["id"] == success[rid][0]["id"]]
        released = [d for d in history if d["trigger"].get("ack") == "RELEASE"]
        assert released, history
        assert released[0]["state"] == "RUNNING" and released[0]["trigger"]["deliveryCount"] == 1
        # the retry happened as a redelivery, not in place
        assert [(d["trigger"]["deliveryCount"], d["taskRuns"][0]["attempts"][-1]["state"])
                for d in success[rid]] == [(2, "SUCCESS")], history
        assert len(success[rid][0]["taskRuns"][0]["attempts"]) == 1
        assert success[rid][0]["runId"] != released[0]["runId"]
    for rid in set(range(100)) - flaky:
        assert [d["trigger"]["deliveryCount"] for d in success[rid]] == [1]
    acks = ack_summary(result.stderr)
    assert (acks["ACCEPT"], acks["RELEASE"], acks["REJECT"], acks["errors"]) == (
        100, 10, 0, 0), result.stderr[-3000:]


def test_a_slow_record_holds_only_its_own_batch(
        bootstrap: str, admin: AdminClient, new_topic: Callable[..., str],
        tmp_path: Path) -> None:
    """Records 25, 50 and 75 take 700 ms (inside the 1 s lock). While each runs, batches
    polled after it by the worker's other members start and finish; with one member per
    worker no later batch could start before the slow one's batch was acked."""
    topic, group, log = new_topic(1), f"share-{uuid.uuid4().hex[:8]}", log_topic(admin)
    flow = share_flow(tmp_path, topic, group, f"""\
tasks:
  - id: work
    type: core.Python
    function: "tests.flow_funcs:flaky"
    args: {{marks: "{tmp_path}", every: 25, slow_ms: 700}}
""")
    proc = start_flow(flow, flow_env(bootstrap, log, PYTHONPATH=str(REPO),
                                     WAXFLOW_LOG_LEVEL="INFO", WAXFLOW_SHARE_MEMBERS="4"),
                      idle=HEARTBEAT_S + 5)  # it waits a heartbeat with nothing to read
    # the records come once the job runs: produced before it started, they would all be
    # acquired by the first member to fetch (nothing left for the others to overtake with)
    produce_small_batches(bootstrap, topic, ids_json([101]))
    deadline = time.monotonic() + 120
    while not _logged(bootstrap, log):
        assert time.monotonic() < deadline and proc.poll() is None, proc.captured()[1][-3000:]
        time.sleep(0.2)
    # 101 shows that one member has the partition; the others get it on their next share
    # heartbeat (the broker's group.share.heartbeat.interval.ms, 5 s). Produced before that,
    # every batch went to the one member (CI: nothing overtaken, since nothing else polled)
    time.sleep(HEARTBEAT_S + 1)
    for first in range(1, 100, 10):  # a producer batch at a time, as a live topic fills
        produce_small_batches(bootstrap, topic, ids_json(list(range(first, min(first + 10,
                                                                                100)))))
        time.sleep(0.05)
    err = finish(proc, timeout=180)

    terminal = [d for d in log_documents(bootstrap, log)
                if d["terminal"] and d["state"] == "SUCCESS"]
    assert sorted({_rid(d) for d in terminal}) == [*range(1, 100), 101]
    overtaken = {}
    for slow in (25, 50, 75):
        s = next(d for d in terminal if _rid(d) == slow)
        batch = (slow - 1) // 10  # produced as 1-10, 11-20, ...
        overtaken[slow] = [
            _rid(d) for d in terminal
            if (_rid(d) - 1) // 10 != batch
            and _when(d, "startDate") > _when(s, "startDate")
            and _when(d, "endDate") < _when(s, "endDate")]
    assert all(len(v) >= 5 for v in overtaken.values()), (overtaken, sorted(
        (_when(d, "startDate"), _when(d, "endDate"), _rid(d)) for d in terminal))
    acks = ack_summary(err)
    assert acks["errors"] == 0 and acks["ACCEPT"] >= 100, err[-3000:]


def test_a_transactional_produce_in_a_share_group_is_pipelined(
        bootstrap: str, admin: AdminClient, new_topic: Callable[..., str],
        tmp_path: Path) -> None:
    """A share group has no offsets to commit: each transactional Produce task run commits
    its own transaction, and the flow is pipelined like any other. Records 0, 25, 50, 75
    fail once and are RELEASEd (their retry would outlive the lock); every record's output
    is visible (read_committed), the others' exactly once, and every record is accepted."""
    topic, out = new_topic(1), new_topic(1)
    group, log = f"share-{uuid.uuid4().hex[:8]}", log_topic(admin)
    marks = tmp_path / "marks"
    marks.mkdir()
    flow = share_flow(tmp_path, topic, group, f"""\
tasks:
  - id: work
    type: core.Python
    function: "tests.flow_funcs:flaky"
    args: {{marks: "{marks}", every: 25}}
    retry: {{type: constant, interval: PT4S, maxAttempts: 2}}
  - id: out
    type: kafka.Produce
    topic: {out}
    from: {{key: "{{{{ outputs.work.id }}}}", value: "{{{{ outputs.work.id }}}}"}}
""")
    produce_small_batches(bootstrap, topic, ids_json(list(range(100))))

    result = run_flow(flow, flow_env(bootstrap, log, PYTHONPATH=str(REPO),
                                     WAXFLOW_LOG_LEVEL="INFO"), idle=4, timeout=180)

    assert result.returncode == 0, result.stderr[-3000:]
    keys = Counter(m.key() for m in read_all(bootstrap, out, isolation="read_committed"))
    assert set(keys) == {str(i).encode() for i in range(100)}
    assert all(n == 1 for k, n in keys.items() if int(k) % 25), keys
    released = [d for d in log_documents(bootstrap, log) if d["trigger"].get("ack") == "RELEASE"]
    assert sorted(_rid_of(d) for d in released) == [0, 25, 50, 75]
    acks = ack_summary(result.stderr)
    assert (acks["ACCEPT"], acks["errors"]) == (100, 0), result.stderr[-3000:]


def _rid_of(doc: dict[str, Any]) -> int:
    return int(doc["trigger"]["offset"])  # ids were produced in offset order
