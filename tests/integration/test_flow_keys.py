"""Issue 13: a realtime flow with Kestra's ``finally``, ``afterExecution`` (a Slack alert with
``runIf`` on FAILED) and ``outputs``, run as a real ``waxflow run`` job on the broker; the
Slack webhook is a real local HTTP server, its URL a secret.

Some records fail (a negative amount): the history shows the ``finally`` task in every
execution, the alert only where the execution FAILED (SKIPPED elsewhere) and only posted for
those, and the flow's outputs (typed, computed with Pebble's ``date``/``slugify``) only on the
successful ones; every offset is committed.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

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
from tests.kafka_helpers import committed

pytestmark = pytest.mark.integration

FLOW = """\
id: order_checks
namespace: tests.flowkeys
tasks:
  - id: refuse_negative
    type: io.kestra.plugin.core.execution.Fail
    runIf: "{{{{ trigger.value.amount < 0 }}}}"
    errorMessage: "negative amount in order {{{{ trigger.value.id }}}}"
  - id: total
    type: io.kestra.plugin.core.output.OutputValues
    values:
      doubled: "{{{{ trigger.value.amount * 2 }}}}"
finally:
  - id: cleanup
    type: io.kestra.plugin.core.log.Log
    message: "cleanup order {{{{ trigger.value.id }}}} ({{{{ execution.state }}}})"
afterExecution:
  - id: alert
    type: io.kestra.plugin.notifications.slack.SlackIncomingWebhook
    runIf: "{{{{ execution.state == 'FAILED' }}}}"
    url: "{{{{ secret('SLACK_WEBHOOK') }}}}"
    payload: |
      {{"text": "order {{{{ trigger.value.id }}}} ended {{{{ execution.state }}}}"}}
outputs:
  - id: doubled
    type: INT
    value: "{{{{ outputs.total.values.doubled }}}}"
  - id: day
    type: DATE
    value: "{{{{ trigger.value.at | date('yyyy-MM-dd', timeZone='Europe/Paris') }}}}"
  - id: customer
    type: STRING
    value: "{{{{ trigger.value.customer | slugify }}}}"
triggers:
  - id: orders
    type: io.kestra.plugin.kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
"""


def test_finally_after_execution_and_outputs_in_the_history(
        bootstrap: str, new_topic: Callable[..., str], httpserver: HTTPServer,
        tmp_path: Path) -> None:
    posted: list[str] = []

    def slack(request: Request) -> Response:
        posted.append(json.loads(request.get_data())["text"])
        return Response("ok", status=200)

    httpserver.expect_request("/hook", method="POST").respond_with_handler(slack)
    topic, group, log = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    orders = [
        {"id": "o1", "amount": 10, "customer": "Zoë Martin", "at": "2026-11-29T23:30:00Z"},
        {"id": "o2", "amount": -5, "customer": "Bob", "at": "2026-11-29T10:00:00Z"},
        {"id": "o3", "amount": 21, "customer": "ACME_corp  Ltd.", "at": "2026-11-28T08:00:00Z"},
        {"id": "o4", "amount": -1, "customer": "Eve", "at": "2026-11-27T08:00:00Z"},
    ]
    produce_json(bootstrap, topic, orders)
    path = write_flow(tmp_path, FLOW.format(topic=topic, group=group))
    env = flow_env(bootstrap, log, WAXFLOW_LOG_LEVEL="INFO",
                   WAXFLOW_SECRET_SLACK_WEBHOOK=httpserver.url_for("/hook"))

    result = run_flow(path, env, idle=4.0, timeout=180)

    assert result.returncode == 0, result.stderr[-3000:]
    docs = {d["trigger"]["offset"]: d for d in latest_by_id(log_documents(bootstrap, log))
            .values()}
    assert sorted(docs) == [0, 1, 2, 3]
    states = {offset: d["state"] for offset, d in docs.items()}
    assert states == {0: "SUCCESS", 1: "FAILED", 2: "SUCCESS", 3: "FAILED"}
    for offset, doc in docs.items():
        runs = [(r["taskId"], r["state"]) for r in doc["taskRuns"]]
        if doc["state"] == "SUCCESS":
            assert runs == [("refuse_negative", "SKIPPED"), ("total", "SUCCESS"),
                            ("cleanup", "SUCCESS"), ("alert", "SKIPPED")], runs
            assert doc["error"] is None
        else:
            assert runs == [("refuse_negative", "FAILED"), ("cleanup", "SUCCESS"),
                            ("alert", "SUCCESS")], runs
            order = orders[offset]["id"]
            assert doc["error"] == {"taskId": "refuse_negative",
                                    "message": f"negative amount in order {order}"}
            assert "outputs" not in doc
        cleanup = next(line for line in doc["logs"] if line["taskId"] == "cleanup")
        assert cleanup["message"] == f"cleanup order {orders[offset]['id']} (RUNNING)"
    # outputs: typed, rendered with Pebble's date (in Paris: 23:30Z is the next day) and slugify
    assert docs[0]["outputs"] == {"doubled": 20, "day": "2026-11-30", "customer": "zoe-martin"}
    assert docs[2]["outputs"] == {"doubled": 42, "day": "2026-11-28",
                                  "customer": "acme-corp-ltd"}
    # the alert posted once per failed execution, with the final state; the webhook URL (a
    # secret) never reached the history
    assert sorted(posted) == ["order o2 ended FAILED", "order o4 ended FAILED"]
    assert httpserver.url_for("/hook") not in json.dumps(list(docs.values()))
    assert committed(bootstrap, group, topic, 1) == {0: 4}
    # `waxflow executions show` prints the outputs
    shown = subprocess.run([WAXFLOW, "executions", "show", docs[0]["id"], "--topic-log", log,
                            "--index", str(tmp_path / "index.duckdb")], env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "outputs" in shown.stdout and "zoe-martin" in shown.stdout, shown.stdout
