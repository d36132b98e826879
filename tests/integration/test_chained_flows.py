"""Chained flows and schedules, using the blueprint flow files (topics renamed per test)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from tests.flow_helpers import (
    WAXFLOW,
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce_json,
    run_flow,
    write_flow,
)
from tests.kafka_helpers import read_all

pytestmark = pytest.mark.integration

FLOWS = Path(__file__).resolve().parents[2] / "dataflows" / "flows"


def _blueprint(name: str, **renames: str) -> str:
    text = (FLOWS / name).read_text()
    for old, new in renames.items():
        text = text.replace(old, new)
    return text


def test_event_from_flow_1_starts_exactly_one_execution_of_flow_2_and_trace_follows(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, httpserver: HTTPServer
) -> None:
    jobs, events = new_topic(2), new_topic(2)
    suffix = uuid.uuid4().hex[:6]
    renames = {"pipeline.jobs": jobs, "pipeline.events": events,
               "groupId: pipeline-done": f"groupId: done-{suffix}",
               "groupId: pipeline-notify": f"groupId: notify-{suffix}"}
    done = write_flow(tmp_path, _blueprint("pipeline_done.yaml", **renames), "done.yaml")
    notify = write_flow(tmp_path, _blueprint("pipeline_notify.yaml", **renames), "notify.yaml")
    httpserver.expect_request("/jobs", method="POST").respond_with_json({"ok": True})
    httpserver.expect_request("/notify", method="POST").respond_with_data("ok")
    log_topic = new_log_topic()
    env = flow_env(bootstrap, log_topic, WAXFLOW_DEMO_API=httpserver.url_for("").rstrip("/"))
    produce_json(bootstrap, jobs, [{"id": i, "job": f"job-{i}"} for i in range(10)],
                 partitions=2)

    first = run_flow(done, env, idle=2)
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_flow(notify, env, idle=2)
    assert second.returncode == 0, second.stderr[-2000:]

    events_read = read_all(bootstrap, events, isolation="read_committed")
    assert sorted(json.loads(m.value())["job"] for m in events_read) == \
        sorted(f"job-{i}" for i in range(10))
    notified = [json.loads(req.data)["text"] for req, _ in httpserver.log
                if req.path == "/notify"]
    assert sorted(notified) == sorted(f"job job-{i} completed" for i in range(10))

    docs = latest_by_id(log_documents(bootstrap, log_topic))
    upstream = {d["id"]: d for d in docs.values() if d["flowId"] == "pipeline-done"}
    downstream = [d for d in docs.values() if d["flowId"] == "pipeline-notify"]
    assert len(upstream) == 10 and len(downstream) == 10
    assert {d["upstreamExecutionId"] for d in downstream} == set(upstream)
    assert all(d["state"] == "SUCCESS" for d in docs.values())

    job = next(iter(upstream.values()))["trigger"]
    trace = subprocess.run(
        [WAXFLOW, "executions", "trace", job["topic"], str(job["partition"]),
         str(job["offset"]), "--format", "json", "--index", str(tmp_path / "idx.sqlite")],
        capture_output=True, text=True, env=env, timeout=60)
    assert trace.returncode == 0, trace.stderr
    chain = json.loads(trace.stdout)
    assert [d["flowId"] for d in chain] == ["pipeline-done", "pipeline-notify"]


def test_schedule_extracts_from_an_api_and_produces(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, httpserver: HTTPServer
) -> None:
    products = new_topic(1)
    text = _blueprint("api_to_kafka.yaml", **{"interval: PT1M": "interval: PT1S",
                                              "topic: products": f"topic: {products}"})
    flow = write_flow(tmp_path, text)
    items = [{"sku": f"s{i}", "price": i * 1.5} for i in range(3)]
    httpserver.expect_request("/products").respond_with_json({"items": items})
    log_topic = new_log_topic()
    env = flow_env(bootstrap, log_topic, WAXFLOW_DEMO_API=httpserver.url_for("").rstrip("/"))
    res = subprocess.run([WAXFLOW, "run", str(flow), "--ticks", "2"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    got = [json.loads(m.value()) for m in read_all(bootstrap, products,
                                                   isolation="read_committed")]
    assert got == items + items
    docs = latest_by_id(log_documents(bootstrap, log_topic))
    assert len(docs) == 2
    for d in docs.values():
        assert d["state"] == "SUCCESS"
        assert d["trigger"]["type"] == "schedule.Interval"
        publish = next(t for t in d["taskRuns"] if t["taskId"] == "publish")
        assert publish["outputs"] == {"messagesCount": 3}
