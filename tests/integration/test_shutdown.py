"""SIGTERM / SIGINT stop a job cleanly: in-flight work finished and committed, exit 0, one
line; nothing lost (the rest runs on the next start); a second signal exits at once."""

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
    start_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets
from waxflow.execution import execution_id

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

N = 3000

FLOW = """
id: stop
namespace: tests
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    maxConcurrency: 4
tasks:
  - id: work
    type: core.Python
    function: tests.flow_funcs:slow
    args: {{ms: 20}}
"""


def _wait_for_documents(bootstrap: str, log_topic: str, at_least: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        time.sleep(0.5)
        with contextlib.suppress(KafkaException):
            if len(log_documents(bootstrap, log_topic)) >= at_least:
                return
    raise AssertionError("the job wrote no history")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_and_loses_nothing(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, sig: signal.Signals
) -> None:
    topic, group, log_topic = new_topic(2), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": i} for i in range(N)], partitions=2)
    flow = write_flow(tmp_path, FLOW.format(topic=topic, group=group))
    env = flow_env(bootstrap, log_topic, PYTHONPATH=str(REPO))
    job = start_flow(flow, env)
    _wait_for_documents(bootstrap, log_topic, 200)
    job.send_signal(sig)
    _out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err[-2000:]
    assert f"stopped by {sig.name};" in err and "offsets committed" in err, err[-2000:]
    assert "Traceback" not in err and "error" not in err.lower(), err[-2000:]
    # what is committed is done: every record below the committed offsets has a terminal
    # document, and the stop came before the backlog was through
    done = committed(bootstrap, group, topic, 2)
    latest = latest_by_id(log_documents(bootstrap, log_topic))
    for p, off in done.items():
        for o in range(max(off, 0)):
            doc = latest.get(execution_id("tests", "stop", topic, p, o))
            assert doc is not None and doc["terminal"], (p, o)
    assert sum(max(o, 0) for o in done.values()) < N
    # the next start runs the rest: one SUCCESS history per record
    again = start_flow(flow, env, idle=3)
    _out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err[-2000:]
    assert committed(bootstrap, group, topic, 2) == end_offsets(bootstrap, topic, 2)
    latest = latest_by_id(log_documents(bootstrap, log_topic))
    assert len(latest) == N
    assert {d["state"] for d in latest.values()} == {"SUCCESS"}


def test_second_signal_exits_at_once(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic, group, log_topic = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": i} for i in range(N)])
    flow = write_flow(tmp_path, FLOW.format(topic=topic, group=group).replace(
        "ms: 20", "ms: 2000"))
    job = start_flow(flow, flow_env(bootstrap, log_topic, PYTHONPATH=str(REPO),
                                      WAXFLOW_SHUTDOWN_TIMEOUT="120"))
    _wait_for_documents(bootstrap, log_topic, 1)
    job.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    started = time.monotonic()
    job.send_signal(signal.SIGTERM)
    _out, err = job.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert job.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "second SIGTERM: exiting at once" in err
