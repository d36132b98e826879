"""Routing with core.Switch / core.If to real HTTP endpoints, and secrets kept out of history.

Each record must reach exactly the endpoints its branch selects (bodies rendered with
``tojson`` arrive as the original JSON), and the task runs in the execution log must show
which branch ran. A secret used in a header and in URL queries, and echoed back by a server in
a response body and in an error, must never appear in the execution-log topic's bytes nor in
the process's stdout/stderr.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.flow_helpers import FlowRun, new_group, produce_json, realtime_flow, run_once
from tests.kafka_helpers import committed, end_offsets, read_all

pytestmark = pytest.mark.integration


ROUTING_TASKS = """\
tasks:
  - id: route
    type: core.Switch
    value: "{{ trigger.value.type }}"
    cases:
      refund:
        - id: refund
          type: http.Request
          uri: "@URL@/refund"
          method: POST
          body: "{{ trigger.value | tojson }}"
      purchase:
        - id: purchase
          type: http.Request
          uri: "@URL@/purchase"
          method: POST
          body: "{{ trigger.value | tojson }}"
    defaults:
      - id: unrouted
        type: notify.Webhook
        url: "@URL@/unrouted"
        payload: "{{ trigger.value | tojson }}"
  - id: alert
    type: core.If
    condition: "{{ trigger.value.amount > 10000 }}"
    then:
      - id: big
        type: notify.Webhook
        url: "@URL@/big"
        payload: "{{ trigger.value | tojson }}"
    else:
      - id: small
        type: core.Log
        message: "small order {{ trigger.value.id }}"
"""

ORDERS = [
    {"id": 1, "type": "refund", "amount": 50},
    {"id": 2, "type": "purchase", "amount": 20000},
    {"id": 3, "type": "purchase", "amount": 5, "note": "{{ 7*7 }} stays literal"},
    {"id": 4, "type": "gift", "amount": 15000},
    {"id": 5, "type": "refund", "amount": 10001},
    {"id": 6, "type": "purchase", "amount": 10000},
]
EXPECTED = {"/refund": [1, 5], "/purchase": [2, 3, 6], "/unrouted": [4], "/big": [2, 4, 5]}


def run_routing(bootstrap: str, tmp_path: Path, topic: str, group: str, tasks: str,
                url: str, **env: str) -> FlowRun:
    """Run the routing flow (``tasks``, ``@URL@`` standing for ``url``) over ``topic``."""
    text = realtime_flow("routing", "tests.routing", tasks.replace("@URL@", url), topic=topic,
                         group=group)
    return run_once(bootstrap, tmp_path, text, idle=2, timeout=60, **env)


def bodies(server: HTTPServer, path: str) -> list[Any]:
    return [json.loads(req.get_data()) for req, _ in server.log if req.path == path]


def test_switch_and_if_route_each_record_to_its_endpoints(
        bootstrap: str, new_topic: Callable[..., str], httpserver: HTTPServer,
        tmp_path: Path) -> None:
    for path in EXPECTED:
        httpserver.expect_request(path, method="POST").respond_with_data("ok")
    topic, group = new_topic(), new_group()
    produce_json(bootstrap, topic, ORDERS)

    run = run_routing(bootstrap, tmp_path, topic, group, ROUTING_TASKS,
                      httpserver.url_for("").rstrip("/")).ok()

    orders = {o["id"]: o for o in ORDERS}
    for path, ids in EXPECTED.items():
        got = bodies(httpserver, path)
        assert sorted(b["id"] for b in got) == ids, path
        for body in got:
            assert body == orders[body["id"]], "tojson body is the record's value, unchanged"
    assert {req.path for req, _ in httpserver.log} == set(EXPECTED)
    for req, _ in httpserver.log:
        assert req.headers["Content-Type"].startswith("application/json")

    docs = {d["trigger"]["offset"]: d for d in run.latest().values()}
    assert sorted(docs) == list(range(len(ORDERS)))
    branch = {"refund": "refund", "purchase": "purchase", "gift": "unrouted"}
    for offset, order in enumerate(ORDERS):
        doc = docs[offset]
        assert doc["state"] == "SUCCESS", doc
        runs = {r["taskId"]: r for r in doc["taskRuns"]}
        chosen = branch[order["type"]]
        big = order["amount"] > 10000
        assert set(runs) == {"route", chosen, "alert", "big" if big else "small"}
        assert runs["route"]["outputs"] == {"value": order["type"],
                                            "defaults": chosen == "unrouted"}
        assert runs[chosen]["parentTaskId"] == "route"
        assert runs["alert"]["outputs"] == {"condition": big}
        assert runs["big" if big else "small"]["parentTaskId"] == "alert"
        assert all(r["state"] == "SUCCESS" for r in runs.values())
    assert committed(bootstrap, group, topic, 1) == end_offsets(bootstrap, topic, 1) == {
        0: len(ORDERS)}


TOKEN = "{{ secret('API_TOKEN') }}"
# credentials, path and query of a URL that refuses connections: every part may leak
REFUSED = f"http://user:{TOKEN}@127.0.0.1:1/{TOKEN}/x?token={TOKEN}"
SECRET_TASKS = """\
tasks:
  - id: secure
    type: http.Request
    uri: "@URL@/secure?token={{ secret('API_TOKEN') }}&id={{ trigger.value.id }}"
    headers:
      Authorization: "Bearer {{ secret('API_TOKEN') }}"
  - id: echo
    type: http.Request
    uri: "@URL@/echo?token={{ secret('API_TOKEN') }}"
    headers:
      X-Api-Key: "{{ secret('API_TOKEN') }}"
    allowFailure: true
  - id: refused
    type: http.Request
    uri: "@REFUSED@"
    allowFailure: true
  - id: keep
    type: core.Set
    values:
      token: "{{ secret('API_TOKEN') }}"
  - id: say
    type: core.Log
    level: WARN
    message: "calling with token {{ secret('API_TOKEN') }}"
  - id: boom
    type: core.Fail
    errorMessage: "rejected token {{ secret('API_TOKEN') }}"
errors:
  - id: page
    type: notify.Webhook
    url: "@URL@/errors?token={{ secret('API_TOKEN') }}"
    payload: {msg: "failed"}
"""


def test_secret_never_reaches_the_log_or_process_output(
        bootstrap: str, new_topic: Callable[..., str], httpserver: HTTPServer,
        tmp_path: Path) -> None:
    secret = f"tok-{uuid.uuid4().hex}"

    def secure(request: Request) -> Response:
        # the server answers with what it received: the token lands in the task outputs
        return Response(json.dumps({"got": request.args.get("token"),
                                    "auth": request.headers.get("Authorization")}),
                        status=200, content_type="application/json")

    def echo(request: Request) -> Response:
        # a failing server that quotes the token in its error body (→ task error text)
        return Response(f"invalid key {request.headers.get('X-Api-Key')} for "
                        f"{request.args.get('token')}", status=500)

    httpserver.expect_request("/secure").respond_with_handler(secure)
    httpserver.expect_request("/echo").respond_with_handler(echo)
    httpserver.expect_request("/errors", method="POST").respond_with_data("ok", status=502)
    topic = new_topic()
    produce_json(bootstrap, topic, [{"id": 1}, {"id": 2}])

    run = run_routing(bootstrap, tmp_path, topic, new_group(),
                      SECRET_TASKS.replace("@REFUSED@", REFUSED),
                      httpserver.url_for("").rstrip("/"), WAXFLOW_SECRET_API_TOKEN=secret).ok()

    result, log = run.result, run.log_topic
    # the secret was really used: in the query and the header of every call
    secure_reqs = [req for req, _ in httpserver.log if req.path == "/secure"]
    assert len(secure_reqs) == 2
    for req in secure_reqs:
        assert req.args["token"] == secret
        assert req.headers["Authorization"] == f"Bearer {secret}"
    assert [req.headers["X-Api-Key"] for req, _ in httpserver.log
            if req.path == "/echo"] == [secret, secret]
    assert [req.args["token"] for req, _ in httpserver.log
            if req.path == "/errors"] == [secret, secret]

    # every path that could leak it ran: outputs, error texts, log line, handler failure
    docs = list(run.latest().values())
    assert len(docs) == 2
    for doc in docs:
        assert doc["state"] == "FAILED" and doc["error"]["taskId"] == "boom"
        runs = {r["taskId"]: r for r in doc["taskRuns"]}
        assert runs["secure"]["state"] == "SUCCESS" and runs["secure"]["outputs"]["body"]
        assert "answered 500" in runs["echo"]["attempts"][0]["error"]
        assert runs["refused"]["attempts"][0]["state"] == "FAILED"
        assert runs["keep"]["outputs"] == {"token": "******"}
        assert "rejected token" in doc["error"]["message"]
        assert runs["page"]["state"] == "FAILED"
    assert "calling with token" in result.stderr

    raw = bytearray()
    for msg in read_all(bootstrap, log):
        raw += msg.key() or b""
        raw += msg.value() or b""
        for name, value in msg.headers() or []:
            raw += name.encode() + (value or b"")
    assert b"******" in raw, "secret-bearing text reached the log, masked"
    assert secret.encode() not in raw
    assert secret not in result.stdout
    assert secret not in result.stderr
