"""The ways to run a flow: several processes, and plain ``python -m bytewax.run``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.flow_helpers import (
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce_json,
    run_flow,
    start_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets
from waxflow.execution import execution_id

pytestmark = pytest.mark.integration

FLOW = """
id: modes
namespace: tests
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
tasks:
  - id: double
    type: core.Set
    values: {{twice: "{{{{ trigger.value.n * 2 }}}}"}}
"""


def _check_all_done(bootstrap: str, topic: str, group: str, log_topic: str,
                    parts: int) -> dict[str, dict[str, object]]:
    ends = end_offsets(bootstrap, topic, parts)
    assert committed(bootstrap, group, topic, parts) == ends
    latest = latest_by_id(log_documents(bootstrap, log_topic))
    expected = {execution_id("tests", "modes", topic, p, o)
                for p, end in ends.items() for o in range(end)}
    assert set(latest) == expected
    assert {d["state"] for d in latest.values()} == {"SUCCESS"}
    return latest


def test_two_processes_share_the_partitions(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic, group, log_topic = new_topic(4), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": i, "n": i} for i in range(400)], partitions=4)
    flow = write_flow(tmp_path, FLOW.format(topic=topic, group=group))
    res = run_flow(flow, flow_env(bootstrap, log_topic), "--processes", "2", idle=2)
    assert res.returncode == 0, res.stderr[-2000:]
    latest = _check_all_done(bootstrap, topic, group, log_topic, 4)
    outs = {d["taskRuns"][0]["outputs"]["twice"] for d in latest.values()}  # type: ignore[index]
    assert outs == {2 * i for i in range(400)}


def test_python_m_bytewax_run_load_flow(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic, group, log_topic = new_topic(2), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": i, "n": i} for i in range(100)], partitions=2)
    flow = write_flow(tmp_path, FLOW.format(topic=topic, group=group))
    env = flow_env(bootstrap, log_topic, WAXFLOW_STOP_WHEN_IDLE="2")
    res = subprocess.run([sys.executable, "-m", "bytewax.run",
                          f"waxflow.dataflows:load_flow('{flow}')", "-s", "1"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    _check_all_done(bootstrap, topic, group, log_topic, 2)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return [int(x) for x in out.split()]


def test_processes_split_the_partitions_and_stop_together(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """A realtime flow's ``--processes 2`` are two independent runs that together read every
    partition; SIGKILL one and the launcher stops the other (SIGTERM: it finishes and
    commits what runs) and exits non-zero; a restart finishes what the killed one had not
    committed."""
    topic, group, log_topic = new_topic(4), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": i, "n": i} for i in range(200)], partitions=4)
    flow = write_flow(tmp_path, FLOW.format(topic=topic, group=group))
    env = flow_env(bootstrap, log_topic, WAXFLOW_LOG_LEVEL="INFO")
    proc = start_flow(flow, env, "--processes", "2", idle=600)
    try:
        deadline = time.monotonic() + 120
        while len(latest_by_id(log_documents(bootstrap, log_topic))) < 200:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the two processes did not do the work"
            time.sleep(0.5)
        kids = _children(proc.pid)
        assert len(kids) == 2, kids
        os.kill(kids[1], signal.SIGKILL)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "stopped by SIGTERM" in err, err[-3000:]
    # the killed process may have died between its documents and its commit: the restart
    # replays what it had not committed, and then every offset is committed exactly once
    res = run_flow(flow, flow_env(bootstrap, log_topic), "--processes", "2", idle=2)
    assert res.returncode == 0, res.stderr[-2000:]
    _check_all_done(bootstrap, topic, group, log_topic, 4)


def test_run_with_inputs(bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    """``--input NAME=VALUE`` gives every execution that input (in every process of
    ``--processes``); a value that does not fit stops the run with one line, before Kafka."""
    topic, group, log_topic = new_topic(2), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": i, "n": i} for i in range(20)], partitions=2)
    flow = write_flow(tmp_path, FLOW.format(topic=topic, group=group).replace(
        "tasks:", "inputs:\n  - {id: factor, type: INT, defaults: 2}\ntasks:").replace(
        "trigger.value.n * 2", "trigger.value.n * inputs.factor"))
    bad = run_flow(flow, flow_env(bootstrap, log_topic), "--input", "factor=x", idle=2)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "factor" in bad.stderr.strip().splitlines()[-1], bad.stderr[-2000:]
    res = run_flow(flow, flow_env(bootstrap, log_topic), "--processes", "2", "--input",
                   "factor=10", idle=2)
    assert res.returncode == 0, res.stderr[-2000:]
    latest = _check_all_done(bootstrap, topic, group, log_topic, 2)
    outs = {d["taskRuns"][0]["outputs"]["twice"] for d in latest.values()}  # type: ignore[index]
    assert outs == {10 * i for i in range(20)}


def test_processes_are_forks_of_the_launcher_or_spawned_without_one(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """``--processes 2``'s members are forks of the launcher (which imported and validated
    everything they need), so they run its command line; ``run_cluster`` without a member
    to fork (as when the launcher is not single-threaded) spawns ``python -m waxflow.cli``
    members instead. Either way the two do every record."""
    topic, group, log_topic = new_topic(2), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": i, "n": i} for i in range(40)], partitions=2)
    flow = write_flow(tmp_path, FLOW.format(topic=topic, group=group))
    env = flow_env(bootstrap, log_topic)
    proc = start_flow(flow, env, "--processes", "2", idle=600)
    try:
        deadline = time.monotonic() + 120
        while len(latest_by_id(log_documents(bootstrap, log_topic))) < 40:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the two processes did not do the work"
            time.sleep(0.5)
        kids = _children(proc.pid)
        assert len(kids) == 2, kids
        launcher = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert all(Path(f"/proc/{k}/cmdline").read_bytes() == launcher for k in kids)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert err.count("stopped by SIGTERM") == 2, err[-3000:]
    _check_all_done(bootstrap, topic, group, log_topic, 2)

    produce_json(bootstrap, topic, [{"id": i, "n": i} for i in range(40, 80)], partitions=2)
    spawn = (f"import sys; from waxflow.dataflows.runner import run_cluster; "
             f"sys.exit(run_cluster(['run', {str(flow)!r}, '--stop-when-idle', '2'], 2, "
             f"flow_path={str(flow)!r}))")
    res = subprocess.run([sys.executable, "-c", spawn], env=env, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    _check_all_done(bootstrap, topic, group, log_topic, 2)
