"""A secret, and what a template makes of it, never leaves the process in clear.

A real ``waxflow run`` on the real broker, with ``WAXFLOW_LOG_LEVEL=INFO`` (so third-party
INFO lines, httpx's ``HTTP Request: GET <full URL>`` among them, are printed), calls a real
loopback HTTP server that answers 500 with the token in a URL query: the request fails,
the execution fails and its errors handler runs. The flow also derives values from the
secret (``| upper``, ``| reverse``, ``"Bearer " ~``) and logs and outputs them. The secret,
its upper-case and its reversed forms appear nowhere: not on stdout or stderr, not in the
execution-log topic (keys, values, headers), not in the execution index built from it.

Third-party log lines are masked by :func:`waxflow.logs.setup_logging`, which ``waxflow run``
must install (in ``waxflow.cli._run``): with a bare ``logging.basicConfig`` httpx's line
prints the token and this test fails at ``token=******``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.flow_helpers import new_group, produce_json, realtime_flow, run_once
from tests.kafka_helpers import read_all
from waxflow.recovery.index import ExecutionIndex

pytestmark = pytest.mark.integration

TASKS = """\
tasks:
  - id: derive
    type: core.Set
    values:
      upper: "{{ secret('TOKEN') | upper }}"
      reversed: "{{ secret('TOKEN') | reverse }}"
      bearer: "{{ 'Bearer ' ~ secret('TOKEN') }}"
  - id: say
    type: core.Log
    message: "upper={{ secret('TOKEN') | upper }} reversed={{ secret('TOKEN') | reverse }}
      kept={{ outputs.derive.upper }} id={{ trigger.value.id }}"
  - id: call
    type: http.Request
    uri: "@URL@/api?token={{ secret('TOKEN') }}&id={{ trigger.value.id }}"
    headers:
      Authorization: "Bearer {{ secret('TOKEN') | upper }}"
errors:
  - id: report
    type: core.Log
    level: ERROR
    message: "{{ execution.id }} failed with {{ secret('TOKEN') | reverse }}"
"""


def test_secret_and_derived_forms_never_leave_the_process(
        bootstrap: str, new_topic: Callable[..., str], httpserver: HTTPServer,
        tmp_path: Path) -> None:
    secret = f"tok-{uuid.uuid4().hex}"
    forms = {"secret": secret, "upper": secret.upper(), "reversed": secret[::-1]}
    assert len(set(forms.values())) == 3

    def api(request: Request) -> Response:
        # fails, quoting what it got (→ the task's error text)
        return Response(f"bad token {request.args.get('token')} "
                        f"{request.headers.get('Authorization')}", status=500)

    httpserver.expect_request("/api").respond_with_handler(api)
    topic = new_topic()
    produce_json(bootstrap, topic, [{"id": 1}, {"id": 2}])
    text = realtime_flow("bad-input-secrets", "tests.secrets",
                         TASKS.replace("@URL@", httpserver.url_for("").rstrip("/")),
                         topic=topic, group=new_group())

    run = run_once(bootstrap, tmp_path, text, idle=2, timeout=90, WAXFLOW_SECRET_TOKEN=secret,
                   WAXFLOW_LOG_LEVEL="INFO").ok()

    result, log = run.result, run.log_topic
    # the secret and its derived forms were really sent, so every leaking path ran
    calls = [req for req, _ in httpserver.log if req.path == "/api"]
    assert sorted(req.args["id"] for req in calls) == ["1", "2"]
    for req in calls:
        assert req.args["token"] == secret
        assert req.headers["Authorization"] == f"Bearer {forms['upper']}"
    output = result.stdout + result.stderr
    # the lines that used to carry them are there, masked
    assert "HTTP Request: GET" in output, "httpx's INFO line was printed"
    assert "token=******" in output
    assert "upper=****** reversed=****** kept=****** id=1" in output
    assert "failed with ******" in output

    docs = list(run.latest().values())
    assert len(docs) == 2
    for doc in docs:
        assert doc["state"] == "FAILED" and doc["error"]["taskId"] == "call"
        assert "answered 500" in doc["error"]["message"]
        runs = {r["taskId"]: r for r in doc["taskRuns"]}
        assert runs["derive"]["outputs"] == {"upper": "******", "reversed": "******",
                                             "bearer": "Bearer ******"}
        assert runs["report"]["state"] == "SUCCESS"

    raw = bytearray()
    for msg in read_all(bootstrap, log):
        raw += msg.key() or b""
        raw += msg.value() or b""
        for name, value in msg.headers() or []:
            raw += name.encode() + (value or b"")
    assert b"******" in raw

    index_path = tmp_path / "index.sqlite"
    with ExecutionIndex(index_path) as index:
        assert index.sync(bootstrap, log, timeout=30) >= 2
        shown = [index.show(doc["id"]) for doc in docs]
    assert all(shown)
    index_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("index.sqlite*"))
    assert b"******" in index_bytes

    for name, value in forms.items():
        escaped = json.dumps(value)[1:-1]
        assert value not in output, f"{name} form on stdout/stderr"
        assert value.encode() not in raw, f"{name} form in the execution log"
        assert value.encode() not in index_bytes, f"{name} form in the index"
        assert value not in json.dumps(shown), f"{name} form in `executions show`"
        assert escaped == value  # hex token: no escaped spelling to look for
