"""G1/G2 on the real broker: SIGKILL a realtime flow three times, restart, lose nothing.

Runs with ``-w 2`` (the done sink moves items between workers), so a commit scheme that
ran ahead of the work would show missing records here.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.flow_helpers import (
    LogWatcher,
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce_json,
    run_flow,
    runs_by_id,
    start_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets
from waxflow.execution import execution_id

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
N = 2000
PARTS = 3

FLOW = """
id: kill-test
namespace: tests
triggers:
  - id: orders
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    maxConcurrency: 8
tasks:
  - id: work
    type: core.Python
    function: "tests.flow_funcs:slow"
    args: {{ms: 15}}
  - id: route
    type: core.If
    condition: "{{{{ trigger.value.id % 2 == 0 }}}}"
    then:
      - {{id: even, type: core.Set, values: {{half: "{{{{ trigger.value.id // 2 }}}}"}}}}
"""



@pytest.mark.parametrize("recovery", [False, True], ids=["group-offsets", "recovery-dir"])
def test_kill_three_times_nothing_lost_one_history(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, recovery: bool
) -> None:
    topic = new_topic(PARTS)
    group = f"g-{uuid.uuid4().hex[:8]}"
    log_topic = new_log_topic()
    produce_json(bootstrap, topic, [{"id": i} for i in range(N)], partitions=PARTS)
    flow = write_flow(tmp_path, FLOW.format(topic=topic, group=group))
    env = flow_env(bootstrap, log_topic, PYTHONPATH=str(REPO))

    args = ["-w", "2"]
    if recovery:
        args += ["--recovery-dir", str(tmp_path / "recovery")]
    watcher = LogWatcher(bootstrap, log_topic)
    kills = 0
    try:
        for threshold in (300, 900, 1500):
            proc = start_flow(flow, env, *args)
            try:
                watcher.wait_for(threshold, proc=proc)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
            assert proc.returncode == -signal.SIGKILL
            # G1 at the moment of the kill: below each committed offset, every record has
            # a terminal document in the log
            mid = committed(bootstrap, group, topic, PARTS)
            done_now = {d["id"] for d in log_documents(bootstrap, log_topic) if d["terminal"]}
            for p, off in mid.items():
                missing = [o for o in range(max(off, 0))
                           if execution_id("tests", "kill-test", topic, p, o) not in done_now]
                assert not missing, f"partition {p} committed {off} but {missing[:5]} not done"
    finally:
        watcher.close()
    assert kills == 3

    final = run_flow(flow, env, *args, idle=3)
    assert final.returncode == 0, final.stderr[-2000:]

    ends = end_offsets(bootstrap, topic, PARTS)
    assert committed(bootstrap, group, topic, PARTS) == ends
    assert sum(ends.values()) == N

    docs = log_documents(bootstrap, log_topic)
    latest = latest_by_id(docs)
    expected = {execution_id("tests", "kill-test", topic, p, o)
                for p, end in ends.items() for o in range(end)}
    assert set(latest) == expected  # exactly one execution id per record, none missing
    assert {d["state"] for d in latest.values()} == {"SUCCESS"}
    assert all(d["terminal"] for d in latest.values())
    # records that ran before a kill but were not committed ran again, under the same id
    runs = runs_by_id(docs)
    replayed = [i for i, r in runs.items() if len(r) > 1]
    assert replayed, "a kill mid-work must leave some records to replay"
    # each replayed execution's history shows the earlier run
    for exec_id in replayed[:20]:
        states = [d["state"] for d in docs if d["id"] == exec_id]
        assert states.count("RUNNING") >= 2
