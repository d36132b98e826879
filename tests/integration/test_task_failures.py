"""G6 task failure on the real broker, with real HTTP servers.

Retries count attempts in the history; a task failing after its retries fails the execution,
runs the flow's ``errors`` tasks and records the error, and the offset advances; with
``onFailure: STOP`` the job halts without committing the record, which replays (same
execution id, a new run) once the cause is fixed. ``allowFailure`` turns the failure into
WARNING; a task ``timeout`` cuts a slow call short.
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.flow_helpers import (
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce_json,
    realtime_flow,
    run_flow,
    runs_by_id,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets

pytestmark = pytest.mark.integration


def flow_file(tmp_path: Path, topic: str, group: str, body: str, trigger_extra: str = "",
              **urls: str) -> Path:
    text = realtime_flow("task-failures", "tests.g6", body, topic=topic, group=group,
                         trigger=trigger_extra)
    for name, url in urls.items():
        text = text.replace(f"@{name}@", url)
    return write_flow(tmp_path, text)


def by_offset(bootstrap: str, log: str) -> dict[int, dict[str, Any]]:
    """Latest document per execution keyed by trigger offset (single-partition topics)."""
    out: dict[int, dict[str, Any]] = {}
    for doc in latest_by_id(log_documents(bootstrap, log)).values():
        offset = doc["trigger"]["offset"]
        assert offset not in out, f"two execution ids for offset {offset}"
        out[offset] = doc
    return out


def task_run(doc: dict[str, Any], task_id: str) -> dict[str, Any]:
    runs = [r for r in doc["taskRuns"] if r["taskId"] == task_id]
    assert len(runs) == 1, f"{task_id}: {doc['taskRuns']}"
    return runs[0]


def request_ids(server: HTTPServer, path: str) -> list[str]:
    return [req.args.get("id", "") for req, _ in server.log if req.path == path]


def seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def test_retry_until_success_keeps_every_attempt(
        bootstrap: str, new_topic: Callable[..., str], httpserver: HTTPServer,
        tmp_path: Path) -> None:
    calls: Counter[str] = Counter()

    def flaky(request: Request) -> Response:
        rid = request.args["id"]
        calls[rid] += 1
        if calls[rid] <= 2:
            return Response(f"busy {calls[rid]}", status=503)
        return Response(json.dumps({"ok": rid}), status=200, content_type="application/json")

    httpserver.expect_request("/api", method="POST").respond_with_handler(flaky)
    topic, group, log = new_topic(), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": "a"}, {"id": "b"}, {"id": "c"}])
    flow = flow_file(tmp_path, topic, group, """\
tasks:
  - id: call
    type: http.Request
    uri: "@API@?id={{ trigger.value.id }}"
    method: POST
    body: "{{ trigger.value | tojson }}"
    retry: {type: constant, interval: PT0.1S, maxAttempts: 5}
""", API=httpserver.url_for("/api"))

    result = run_flow(flow, flow_env(bootstrap, log), idle=2, timeout=60)

    assert result.returncode == 0, result.stderr
    docs = by_offset(bootstrap, log)
    assert sorted(docs) == [0, 1, 2]
    for doc in docs.values():
        assert doc["state"] == "SUCCESS", doc
        run = task_run(doc, "call")
        assert run["state"] == "SUCCESS"
        attempts = run["attempts"]
        assert [a["state"] for a in attempts] == ["FAILED", "FAILED", "SUCCESS"], attempts
        assert all("503" in a["error"] for a in attempts[:2])
        assert attempts[2]["error"] is None
        for before, after in itertools.pairwise(attempts):
            assert seconds_between(before["endDate"], after["startDate"]) >= 0.09
        rid = run["outputs"]["body"]["ok"]
        assert run["outputs"]["code"] == 200
        assert calls[rid] == 3
    assert calls == {"a": 3, "b": 3, "c": 3}
    assert committed(bootstrap, group, topic, 1) == end_offsets(bootstrap, topic, 1) == {0: 3}


def test_failure_after_retries_runs_errors_records_and_advances(
        bootstrap: str, new_topic: Callable[..., str], httpserver: HTTPServer,
        tmp_path: Path) -> None:
    httpserver.expect_request("/api").respond_with_data("upstream down", status=500)
    httpserver.expect_request("/errors", method="POST").respond_with_data("ok")
    topic, group, log = new_topic(), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": "a"}, {"id": "b"}])
    flow = flow_file(tmp_path, topic, group, """\
tasks:
  - id: call
    type: http.Request
    uri: "@API@?id={{ trigger.value.id }}"
    retry: {type: constant, interval: PT0.1S, maxAttempts: 3}
  - id: never
    type: http.Request
    uri: "@API@?id=never"
errors:
  - id: page
    type: notify.Webhook
    url: "@ERRORS@"
    payload:
      offset: "{{ trigger.offset }}"
      execution: "{{ execution.id }}"
""", API=httpserver.url_for("/api"), ERRORS=httpserver.url_for("/errors"))

    result = run_flow(flow, flow_env(bootstrap, log), idle=2, timeout=60)

    assert result.returncode == 0, result.stderr  # a failed execution does not stop the flow
    docs = by_offset(bootstrap, log)
    assert sorted(docs) == [0, 1]
    for doc in docs.values():
        assert doc["state"] == "FAILED" and doc["terminal"] is True, doc
        run = task_run(doc, "call")
        assert run["state"] == "FAILED"
        assert [a["state"] for a in run["attempts"]] == ["FAILED"] * 3
        assert all("answered 500" in a["error"] and "upstream down" in a["error"]
                   for a in run["attempts"])
        assert doc["error"]["taskId"] == "call"
        assert "answered 500" in doc["error"]["message"]
        assert "upstream down" in doc["error"]["message"]
        assert not [r for r in doc["taskRuns"] if r["taskId"] == "never"]
        assert task_run(doc, "page")["state"] == "SUCCESS"

    assert sorted(request_ids(httpserver, "/api")) == ["a"] * 3 + ["b"] * 3
    pages = [json.loads(req.get_data()) for req, _ in httpserver.log if req.path == "/errors"]
    assert sorted(p["offset"] for p in pages) == [0, 1], "errors tasks ran once per record"
    assert {p["execution"] for p in pages} == {d["id"] for d in docs.values()}
    assert committed(bootstrap, group, topic, 1) == end_offsets(bootstrap, topic, 1) == {0: 2}


def test_on_failure_stop_halts_then_replays_after_fix(
        bootstrap: str, new_topic: Callable[..., str], httpserver: HTTPServer,
        tmp_path: Path) -> None:
    broken = {"bad": True}

    def handler(request: Request) -> Response:
        if request.args["id"] == "bad" and broken["bad"]:
            return Response("still broken", status=500)
        return Response("fine", status=200)

    httpserver.expect_request("/api").respond_with_handler(handler)
    topic, group, log = new_topic(), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": "good1"}, {"id": "bad"}, {"id": "good2"}])
    flow = flow_file(tmp_path, topic, group, """\
tasks:
  - id: call
    type: http.Request
    uri: "@API@?id={{ trigger.value.id }}"
    retry: {type: constant, interval: PT0.1S, maxAttempts: 2}
""", trigger_extra="    onFailure: STOP\n", API=httpserver.url_for("/api"))
    env = flow_env(bootstrap, log)

    first = run_flow(flow, env, idle=2, timeout=60)

    assert first.returncode == 1, first.stdout + first.stderr
    assert "Traceback" not in first.stderr and "panicked" not in first.stderr
    naming = [ln for ln in first.stderr.splitlines() if f"{topic}/0@1" in ln]
    assert len(naming) == 1, first.stderr
    assert naming[0].startswith("waxflow: error:") and "FAILED" in naming[0]
    assert committed(bootstrap, group, topic, 1)[0] < 2, "committed past the failing record"
    failed = by_offset(bootstrap, log)[1]
    assert failed["state"] == "FAILED"
    bad_id = failed["id"]

    broken["bad"] = False
    second = run_flow(flow, env, idle=2, timeout=60)

    assert second.returncode == 0, second.stderr
    docs = by_offset(bootstrap, log)
    assert sorted(docs) == [0, 1, 2]
    assert all(d["state"] == "SUCCESS" for d in docs.values()), docs
    assert docs[1]["id"] == bad_id, "the replay keeps the execution id"
    assert len(runs_by_id(log_documents(bootstrap, log))[bad_id]) >= 2
    assert committed(bootstrap, group, topic, 1) == end_offsets(bootstrap, topic, 1) == {0: 3}


def test_allow_failure_gives_warning_and_continues(
        bootstrap: str, new_topic: Callable[..., str], httpserver: HTTPServer,
        tmp_path: Path) -> None:
    httpserver.expect_request("/optional").respond_with_data("nope", status=500)
    httpserver.expect_request("/after").respond_with_data("ok")
    topic, group, log = new_topic(), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": "a"}, {"id": "b"}])
    flow = flow_file(tmp_path, topic, group, """\
tasks:
  - id: optional
    type: http.Request
    uri: "@OPTIONAL@?id={{ trigger.value.id }}"
    allowFailure: true
    retry: {type: constant, interval: PT0.1S, maxAttempts: 2}
  - id: after
    type: http.Request
    uri: "@AFTER@?id={{ trigger.value.id }}"
""", OPTIONAL=httpserver.url_for("/optional"), AFTER=httpserver.url_for("/after"))

    result = run_flow(flow, flow_env(bootstrap, log), idle=2, timeout=60)

    assert result.returncode == 0, result.stderr
    docs = by_offset(bootstrap, log)
    assert sorted(docs) == [0, 1]
    for doc in docs.values():
        assert doc["state"] == "WARNING" and doc["terminal"] is True, doc
        optional = task_run(doc, "optional")
        assert optional["state"] == "WARNING"
        assert [a["state"] for a in optional["attempts"]] == ["FAILED", "FAILED"]
        assert "answered 500" in optional["attempts"][-1]["error"]
        assert task_run(doc, "after")["state"] == "SUCCESS"
    assert sorted(request_ids(httpserver, "/after")) == ["a", "b"]
    assert committed(bootstrap, group, topic, 1) == end_offsets(bootstrap, topic, 1) == {0: 2}


def test_task_timeout_cuts_a_slow_call_short(
        bootstrap: str, new_topic: Callable[..., str], httpserver: HTTPServer,
        tmp_path: Path) -> None:
    release, finished = threading.Event(), threading.Event()

    def slow(_request: Request) -> Response:
        try:
            release.wait(2)  # 2 s unless the test is over (the server is single-threaded)
            return Response("late", status=200)
        finally:
            finished.set()

    httpserver.expect_request("/slow").respond_with_handler(slow)
    topic, group, log = new_topic(), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": "a"}])
    flow = flow_file(tmp_path, topic, group, """\
tasks:
  - id: slow
    type: http.Request
    uri: "@SLOW@"
    timeout: PT0.5S
""", SLOW=httpserver.url_for("/slow"))

    try:
        result = run_flow(flow, flow_env(bootstrap, log), idle=2, timeout=60)
    finally:
        release.set()  # let the handler return before the next test reuses the server
        finished.wait(5)

    assert result.returncode == 0, result.stderr
    doc = by_offset(bootstrap, log)[0]
    assert doc["state"] == "FAILED", doc
    attempts = task_run(doc, "slow")["attempts"]
    assert len(attempts) == 1 and attempts[0]["state"] == "FAILED"
    assert "timed out" in attempts[0]["error"] or "timeout" in attempts[0]["error"].lower()
    assert seconds_between(attempts[0]["startDate"], attempts[0]["endDate"]) < 1.5
    assert "timed out" in doc["error"]["message"] or "timeout" in doc["error"]["message"]
    assert committed(bootstrap, group, topic, 1) == end_offsets(bootstrap, topic, 1) == {0: 1}
