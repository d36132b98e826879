"""One running instance per flow and group: a second ``waxflow run`` refuses to start.

Without the instance lock both would process every record (partitions are assigned by
hand, so the consumer group never splits the work): 1,000 of 1,000 executions ran twice.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from tests.flow_helpers import (
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce_json,
    runs_by_id,
    start_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

N = 1000

REALTIME = """
id: once
namespace: tests
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
tasks:
  - id: slow
    type: core.Python
    function: tests.flow_funcs:slow
    args: {{ms: 2}}
"""

PRODUCE = """
id: once-produce
namespace: tests
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
tasks:
  - id: out
    type: kafka.Produce
    topic: {out}
    from: {{key: "{{{{ trigger.value.id }}}}", value: "{{{{ trigger.value.id }}}}"}}
"""


def _refused(stderr: str) -> bool:
    return "is already running" in stderr and "refusing to start" in stderr


@pytest.mark.parametrize("flow_text", [REALTIME, PRODUCE], ids=["realtime", "produce"])
@pytest.mark.parametrize("delay", [0.0, 4.0], ids=["together", "4s-apart"])
def test_second_instance_refuses_and_each_record_runs_once(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, flow_text: str,
    delay: float,
) -> None:
    topic, out = new_topic(2), new_topic(1)
    group, log_topic = f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": i} for i in range(N)], partitions=2)
    flow = write_flow(tmp_path, flow_text.format(topic=topic, group=group, out=out))
    env = flow_env(bootstrap, log_topic, PYTHONPATH=str(REPO))
    # the first stays up 12 s past its last record: started 4 s later on a loaded machine,
    # the second must still find it running (with 4 s both once exited 0, neither refused)
    first = start_flow(flow, env, idle=12)
    time.sleep(delay)
    second = start_flow(flow, env, idle=12)
    results = [p.communicate(timeout=180) for p in (first, second)]
    codes = [first.returncode, second.returncode]
    assert sorted(codes) == [0, 1], (codes, [r[1][-1500:] for r in results])
    loser = results[codes.index(1)][1]
    assert _refused(loser), loser[-1500:]
    assert "Traceback" not in loser
    assert len([line for line in loser.splitlines() if line.startswith("waxflow:")]) == 1
    docs = log_documents(bootstrap, log_topic)
    runs = runs_by_id(docs)
    assert len(runs) == N
    assert {d["state"] for d in latest_by_id(docs).values()} == {"SUCCESS"}
    assert all(len(r) == 1 for r in runs.values()), "a record was executed twice"
    assert committed(bootstrap, group, topic, 2) == end_offsets(bootstrap, topic, 2)


def test_restart_after_a_kill_takes_the_lock(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """A SIGKILLed holder's membership ends with its session (6 s): a restart waits for it
    instead of refusing."""
    topic, group, log_topic = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": i} for i in range(200)])
    flow = write_flow(tmp_path, REALTIME.format(topic=topic, group=group))
    env = flow_env(bootstrap, log_topic, PYTHONPATH=str(REPO))
    first = start_flow(flow, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the first executions are in the log
        time.sleep(0.5)
        with contextlib.suppress(KafkaException):
            if log_documents(bootstrap, log_topic):
                break
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    started = time.monotonic()
    second = start_flow(flow, env, idle=3)
    _out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-1500:]
    assert time.monotonic() - started < 60
    assert committed(bootstrap, group, topic, 1) == end_offsets(bootstrap, topic, 1)
