"""``waxflow run --metrics-port`` of a flow the compiled per-batch path takes: the executions
run there (and on the quiet general path, ``$WAXFLOW_FASTPATH=0``) are counted when settled —
executions by state, records by topic, task attempts — as many as the history holds, on the
real broker, scraped from the flow's own ``/metrics``; a delivery refused after its execution
was documented SUCCESS is counted once, FAILED."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.flow_helpers import (
    FlowProcess,
    flow_env,
    latest_by_id,
    log_documents,
    new_group,
    new_log_topic,
    produce,
    realtime_flow,
    start_flow,
    write_flow,
)
from tests.integration.test_fastpath import BODY, _values
from tests.integration.test_produce import flow_yaml, terminal_docs, trigger
from tests.kafka_helpers import committed, end_offsets
from waxflow.connectors.broker import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FLOW_NAME = "tests.fastm.fastm"


def _scrape(port: int, flow: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The samples of ``flow``: name -> sorted labels (flow label dropped) -> value; {} while
    the port does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("flow", flow) != flow:
                continue
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "flow"))
            out.setdefault(s.name, {})[labels] = s.value
    return out


def _by(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str,
        *keys: str) -> dict[tuple[str, ...], float]:
    """``sum by (keys) (name)``, zero values left out."""
    out: dict[tuple[str, ...], float] = {}
    for labels, value in samples.get(name, {}).items():
        d = dict(labels)
        key = tuple(d.get(k, "") for k in keys)
        out[key] = out.get(key, 0.0) + value
    return {k: v for k, v in out.items() if v}


def _stop(proc: FlowProcess) -> str:
    proc.terminate()
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate(timeout=10)
    return err


def _run_until_counted(path: Path, env: dict[str, str], total: int, flow: str
                       ) -> tuple[dict[str, dict[tuple[tuple[str, str], ...], float]], str]:
    """Run the flow with ``--metrics-port`` until its ``/metrics`` counts ``total`` executions
    done (one more second: nothing else may be counted), stop it; its samples and stderr."""
    port = free_port()
    proc = start_flow(path, env, "--metrics-port", str(port))
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    try:
        # counted once settled: within a snapshot or two of the broker's acknowledgement
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            samples = _scrape(port, flow)
            if sum(samples.get("waxflow_executions_total", {}).values()) >= total:
                break
            assert proc.poll() is None, "the flow exited"
            time.sleep(0.3)
        time.sleep(1.0)  # nothing more is counted after that (no double count)
        samples = _scrape(port, flow)
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err[-3000:]
    return samples, err


def _history_attempts(history: dict[str, dict[str, Any]]) -> dict[tuple[str, ...], float]:
    """Task attempts of the history's latest documents, by (task, state)."""
    return {k: float(n) for k, n in Counter(
        (run["taskId"], a["state"]) for d in history.values() for run in d["taskRuns"]
        for a in run["attempts"]).items()}


@pytest.mark.parametrize("mode", ["1", "0"], ids=["compiled", "general"])
def test_settled_executions_are_counted_with_metrics_on(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, mode: str) -> None:
    src, dst, group, log = new_topic(2), new_topic(2), new_group(), new_log_topic()
    values = _values()  # one record fails a task (FAILED), one is malformed (SKIPPED)
    produce(bootstrap, src, values, keys=[str(i).encode() for i in range(len(values))],
            partitions=2)
    text = realtime_flow("fastm", "tests.fastm", BODY.replace("{dst}", dst)
                         .replace("{txn}", "false")
                         .replace("{{{{", "{{").replace("}}}}", "}}"),
                         topic=src, group=group)
    env = flow_env(bootstrap, log, PYTHONPATH=str(REPO), WAXFLOW_FASTPATH=mode,
                   WAXFLOW_LOG_LEVEL="DEBUG", WAXFLOW_METRICS_HOST="127.0.0.1")
    total = len(values)
    samples, err = _run_until_counted(write_flow(tmp_path, text), env, total, FLOW_NAME)

    compiled = f"flow {FLOW_NAME}: its records run on the compiled per-batch path" in err
    assert compiled == (mode == "1"), err[-3000:]
    ran = sum(int(m.group(1)) for m in re.finditer(r"compiled path: (\d+) of \d+ records", err))
    assert ran == (total - 2 if mode == "1" else 0), err[-3000:]

    history = latest_by_id(log_documents(bootstrap, log))
    assert len(history) == total
    by_state = Counter(d["state"] for d in history.values())
    assert by_state == {"SUCCESS": total - 2, "FAILED": 1, "SKIPPED": 1}
    assert _by(samples, "waxflow_executions_total", "state") == {
        (state,): float(n) for state, n in by_state.items()}
    assert _by(samples, "waxflow_records_consumed_total", "topic") == {(src,): float(total)}
    assert _by(samples, "waxflow_records_skipped_total", "topic") == {(src,): 1.0}
    attempts = _history_attempts(history)
    assert _by(samples, "waxflow_task_attempts_total", "task", "state") == attempts
    assert attempts[("out", "SUCCESS")] == total - 2
    assert _by(samples, "waxflow_execution_duration_seconds_count") == {(): float(total)}
    assert _by(samples, "waxflow_task_duration_seconds_count", "task") == {
        (k,): float(n) for k, n in Counter(run["taskId"] for d in history.values()
                                           for run in d["taskRuns"]).items()}
    assert not _by(samples, "waxflow_task_retries_total")
    assert not _by(samples, "waxflow_executions_in_flight")
    assert committed(bootstrap, group, src, 2) == end_offsets(bootstrap, src, 2)


def test_a_delivery_refused_after_settling_is_counted_once_as_failed(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    """A record the broker refuses after its task returned: its execution's SUCCESS document
    may be acknowledged first, but it is counted once, FAILED (as the history's latest)."""
    src = new_topic(1)
    dst = new_topic(2, **{"max.message.bytes": "1024"})  # the 4,000-byte record: refused
    sizes = [10, 20, 4000, 30, 40]
    produce(bootstrap, src, [json.dumps({"n": i, "size": s}).encode()
                             for i, s in enumerate(sizes)])
    trig = trigger(src, valueDeserializer="JSON")
    tasks = [{"id": "out", "type": "kafka.Produce", "topic": dst, "transactional": False,
              "from": {"key": "{{ trigger.value.n }}",
                       "value": "{{ 'x' * trigger.value.size }}",
                       "partition": "{{ 1 if trigger.value.size > 1000 else 0 }}"}}]
    path = write_flow(tmp_path, flow_yaml("late-metrics", trig, tasks))
    log = new_log_topic()
    env = flow_env(bootstrap, log, PYTHONPATH=str(REPO), WAXFLOW_METRICS_HOST="127.0.0.1")
    samples, _err = _run_until_counted(path, env, len(sizes), "tests.produce.late-metrics")

    docs = terminal_docs(bootstrap, log)
    assert [d["state"] for d in docs] == ["SUCCESS", "SUCCESS", "FAILED", "SUCCESS", "SUCCESS"]
    assert _by(samples, "waxflow_executions_total", "state") == {("SUCCESS",): 4.0,
                                                                 ("FAILED",): 1.0}
    assert _by(samples, "waxflow_records_consumed_total", "topic") == {(src,): 5.0}
    history = {d["id"]: d for d in docs}
    assert _by(samples, "waxflow_task_attempts_total", "task", "state") == \
        _history_attempts(history)
    assert committed(bootstrap, trig["groupId"], src, 1) == end_offsets(bootstrap, src, 1)
