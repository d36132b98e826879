"""A Bytewax cluster across hosts: ``waxflow run FLOW --addresses h1:p,h2:p --process-id I``.

Each member is started on its own, as it would be on its own host (here: two processes on
loopback, started one after the other, in either order). They form one cluster and share
the topic's partitions. When one member dies the other stops too (a cluster runs all its
members or none); both are restarted and resume from the committed offsets: no record lost,
one SUCCESS history entry per record.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from tests.flow_helpers import (
    FlowProcess,
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce_json,
    start_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets
from waxflow.connectors.broker import free_port
from waxflow.execution import execution_id

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

FLOW = """
id: cluster
namespace: tests
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    maxConcurrency: 1
tasks:
  - id: work
    type: core.Python
    function: "tests.flow_funcs:slow"
    args: {{ms: {ms}}}
"""


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def _ended(bootstrap: str, log_topic: str) -> int:
    """Executions with a terminal document in the log so far."""
    with contextlib.suppress(KafkaException):  # the log topic may not exist yet
        return len({d["id"] for d in log_documents(bootstrap, log_topic) if d.get("terminal")})
    return 0


class Cluster:
    """Two members on loopback, each started separately with the same address list."""

    def __init__(self, flow: Path, env: dict[str, str]) -> None:
        self.flow, self.env = flow, env
        self.addresses = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
        self.metrics = [free_port(), free_port()]

    def start(self, member: int, *extra: str) -> FlowProcess:
        return start_flow(self.flow, self.env, "--addresses", self.addresses,
                          "--process-id", str(member), "--metrics-port",
                          str(self.metrics[member]), *extra)

    def wait_ready(self, member: int, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = _get(self.metrics[member], "/readyz")
            if status == 200:
                return body
            time.sleep(0.1)
        raise AssertionError(f"member {member} not ready: {body}")


def _check_history(bootstrap: str, topic: str, group: str, log_topic: str, parts: int,
                   ) -> tuple[dict[str, dict[str, object]], dict[str, set[str]]]:
    ends = end_offsets(bootstrap, topic, parts)
    assert committed(bootstrap, group, topic, parts) == ends
    docs = log_documents(bootstrap, log_topic)
    latest = latest_by_id(docs)
    expected = {execution_id("tests", "cluster", topic, p, o)
                for p, end in ends.items() for o in range(end)}
    assert set(latest) == expected
    assert {d["state"] for d in latest.values()} == {"SUCCESS"}
    runs: dict[str, set[str]] = defaultdict(set)
    for d in docs:
        runs[d["id"]].add(d["runId"])
    return latest, runs


def test_two_members_started_separately_form_one_cluster_and_survive_a_kill(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic, group, log_topic = new_topic(4), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    flow = write_flow(tmp_path, FLOW.format(topic=topic, group=group, ms=10))
    env = flow_env(bootstrap, log_topic, PYTHONPATH=str(REPO), WAXFLOW_STATS_INTERVAL_MS="300",
                   WAXFLOW_METRICS_HOST="127.0.0.1")
    cluster = Cluster(flow, env)

    # 1. member 1 first, member 0 two seconds later: member 1 waits for its peer and is not
    # ready meanwhile (no partition assigned); then they share the 4 partitions, and every
    # record is executed exactly once (one run per execution id)
    produce_json(bootstrap, topic, [{"id": i} for i in range(400)], partitions=4)
    one = cluster.start(1, "--stop-when-idle", "2")
    deadline = time.monotonic() + 30
    while (answer := _get(cluster.metrics[1], "/readyz"))[0] == 0:
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    time.sleep(2)  # alone, member 1 keeps trying to reach member 0
    status, body = _get(cluster.metrics[1], "/readyz")
    assert status == 503 and body.startswith("not ready"), body
    zero = cluster.start(0, "--stop-when-idle", "2")
    deadline = time.monotonic() + 60
    while True:  # each member's consumers report their partitions as they start fetching
        ready = [cluster.wait_ready(0), cluster.wait_ready(1)]
        parts = [{p.strip(" )\n") for p in body.split("(", 1)[1].split(",")} for body in ready]
        if len(parts[0] | parts[1]) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert parts[0].isdisjoint(parts[1]) and len(parts[0] | parts[1]) == 4, ready
    for proc in (zero, one):
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    _latest, runs = _check_history(bootstrap, topic, group, log_topic, 4)
    assert len(runs) == 400 and all(len(r) == 1 for r in runs.values())

    # 2. more records; SIGKILL member 1 mid-way: member 0 stops by itself with one line.
    # "Mid-way" is read from the execution log (a terminal document is written as its
    # execution ends), not from the metrics, which count an execution only at the snapshot
    # that settles it
    write_flow(tmp_path, FLOW.format(topic=topic, group=group, ms=30))
    produce_json(bootstrap, topic, [{"id": i} for i in range(400, 1200)], partitions=4)
    zero, one = cluster.start(0), cluster.start(1)
    deadline = time.monotonic() + 60
    while (done_before_kill := _ended(bootstrap, log_topic) - 400) < 100:
        assert time.monotonic() < deadline, "the cluster did not start working"
        time.sleep(0.2)
    one.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _out, err = zero.communicate(timeout=60)
    stopped_after = time.monotonic() - killed
    one.communicate(timeout=10)
    assert zero.returncode == 1, err[-3000:]
    assert "cluster member lost" in err and "Traceback" not in err, err[-3000:]
    assert stopped_after < 20, stopped_after
    assert done_before_kill < 800, "the kill came too late to prove anything"

    # 3. restart both: they resume from the committed offsets; nothing lost, one SUCCESS
    # history entry per record (replayed records keep their execution id)
    zero = cluster.start(0, "--stop-when-idle", "2")
    one = cluster.start(1, "--stop-when-idle", "2")
    for proc in (zero, one):
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    latest, runs = _check_history(bootstrap, topic, group, log_topic, 4)
    assert len(latest) == 1200
    replayed = sum(1 for r in runs.values() if len(r) > 1)
    print(json.dumps({"done_before_kill": done_before_kill, "member_0_stopped_after_s":
                      round(stopped_after, 2), "replayed_after_restart": replayed}))

