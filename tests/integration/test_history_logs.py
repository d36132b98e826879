"""An execution's log lines reach the history on the real broker.

A realtime flow logs (``core.Log`` at INFO, DEBUG and WARN, one message rendering a secret),
has a task that fails twice and then succeeds (retries pause the execution, they do not
block the worker), logs a line per value of a ``core.ForEach`` and fails one record on
purpose. Run as a real ``waxflow run`` process with ``WAXFLOW_EXECUTION_LOG_LINES=10`` and
the job's log level at WARNING, the execution-log topic then holds, per record, the lines in
emission order with their level, task id, task run id and attempt; the secret masked; the
bound kept (the first nine lines and the latest, ``logsDropped`` counting the rest); and
stderr shows only what the job's level lets through.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.flow_helpers import latest_by_id, new_group, produce_json, realtime_flow, run_once

pytestmark = pytest.mark.integration

TASKS = """\
tasks:
  - id: hello
    type: core.Log
    message: "record {{ trigger.value.id }} token={{ secret('TOKEN') }}"
  - id: quiet
    type: core.Log
    level: DEBUG
    message: "debug {{ trigger.value.id }}"
  - id: flaky
    type: core.Fail
    condition: "{{ taskrun.attemptsCount < 2 }}"
    errorMessage: "flaky {{ trigger.value.id }} attempt {{ taskrun.attemptsCount + 1 }}"
    retry: {type: constant, interval: PT0.1S, maxAttempts: 3}
  - id: each
    type: core.ForEach
    values: "{{ range(trigger.value.n) | list }}"
    tasks:
      - id: say
        type: core.Log
        level: WARN
        message: "line {{ taskrun.value }} of {{ trigger.value.id }}"
  - id: fatal
    type: core.Fail
    condition: "{{ trigger.value.fail }}"
    errorMessage: "fatal for {{ trigger.value.id }}"
"""


def lines_of(doc: dict[str, Any]) -> list[tuple[str, str | None, int | None, str]]:
    return [(x["level"], x["taskId"], x["attempt"], x["message"]) for x in doc["logs"]]


def check_task_run_ids(doc: dict[str, Any]) -> None:
    """Each line's ``taskRunId`` names a task run of its task (``<id[:16]>-<index>``)."""
    for line in doc["logs"]:
        prefix, _, index = line["taskRunId"].rpartition("-")
        assert prefix == doc["id"][:16], line
        assert doc["taskRuns"][int(index)]["taskId"] == line["taskId"], line


def retries(name: str) -> list[tuple[str, str | None, int | None, str]]:
    return [("WARN", "flaky", n, f"attempt {n} failed: flaky {name} attempt {n}, retrying "
                                 "in 0.1s") for n in (1, 2)]


def test_log_lines_retries_failures_masked_and_bounded_in_the_history(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    secret = f"tok-{uuid.uuid4().hex}"
    topic = new_topic()
    produce_json(bootstrap, topic, [{"id": "a", "n": 2, "fail": False},
                                    {"id": "b", "n": 30, "fail": False},
                                    {"id": "c", "n": 0, "fail": True}])
    text = realtime_flow("history-logs", "tests.logs", TASKS, topic=topic, group=new_group())

    run = run_once(bootstrap, tmp_path, text, idle=2, timeout=120, WAXFLOW_SECRET_TOKEN=secret,
                   WAXFLOW_EXECUTION_LOG_LINES="10").ok()

    result, docs = run.result, run.documents()
    latest = {d["trigger"]["key"]: d for d in latest_by_id(docs).values()}
    assert sorted(latest) == ["a", "b", "c"]
    a, b, c = latest["a"], latest["b"], latest["c"]
    assert (a["state"], b["state"], c["state"]) == ("SUCCESS", "SUCCESS", "FAILED")
    head = [("INFO", "hello", 1, "record {} token=******"), ("DEBUG", "quiet", 1, "debug {}")]

    def start(name: str) -> list[tuple[str, str | None, int | None, str]]:
        return [(lvl, task, n, text.format(name)) for lvl, task, n, text in head] + \
            retries(name)

    # a: every line, in emission order, with its task and attempt
    assert lines_of(a) == start("a") + [("WARN", "say", 1, f"line {i} of a") for i in (0, 1)]
    assert "logsDropped" not in a
    # c: the failure that ended it is its last line
    assert lines_of(c) == [*start("c"), ("ERROR", "fatal", 1, "attempt 1 failed: fatal for c")]
    assert c["error"] == {"taskId": "fatal", "message": "fatal for c"}
    # b: 4 + 30 lines, bound 10: the first nine and the latest stay, 24 dropped
    says = [("WARN", "say", 1, f"line {i} of b") for i in (*range(5), 29)]
    assert lines_of(b) == start("b") + says
    assert b["logsDropped"] == 24
    for doc in (a, b, c):
        check_task_run_ids(doc)
        assert doc["logs"] == sorted(doc["logs"], key=lambda x: x["ts"])
        assert all(x["ts"].endswith("+00:00") for x in doc["logs"])
        assert "truncated" not in doc
    # the flaky task's lines name the attempts the history shows
    flaky = next(r for r in a["taskRuns"] if r["taskId"] == "flaky")
    assert [x["state"] for x in flaky["attempts"]] == ["FAILED", "FAILED", "SUCCESS"]

    # the secret is nowhere: not in any document (RUNNING or terminal), not on stderr/stdout
    everything = "".join(map(str, docs)) + result.stdout + result.stderr
    assert secret not in everything and secret.upper() not in everything
    # stderr shows what the job's level (WARNING) lets through, and only that
    err = result.stderr
    assert "retrying in 0.1s" in err and "line 29 of b" in err
    assert "fatal for c" in err
    assert "debug a" not in err and "record a token" not in err
