"""An execution's log lines: what the engine records, masked, bounded, in the document.

Flows run on the real engine (no broker): ``core.Log`` lines, retry warnings, failures and
late failures are recorded with their level, task, task run and attempt, in emission order;
secrets are masked; past ``LOG_LINES`` the first lines and the latest stay and
``logsDropped`` counts the rest; the job's log level decides only what reaches stderr.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from datetime import datetime
from typing import Any

import pytest

import waxflow.execution as execution_module
from waxflow.dataflows.spec import parse_flow_text
from waxflow.execution import Execution, State, TriggerInfo
from waxflow.expressions import MASK, Expressions, Secrets
from waxflow.logs import LINE_LEVELS, line_level, python_level
from waxflow.operators.engine import Engine
from waxflow.operators.executor import fail_late

KEYS = ["ts", "level", "taskId", "taskRunId", "attempt", "message"]


def flow_of(body: str) -> Any:
    return parse_flow_text(f"id: f\nnamespace: tests\n{body}", "flow.yaml")


def new_execution() -> Execution:
    return Execution(id=uuid.uuid4().hex, namespace="tests", flow_id="f",
                     trigger=TriggerInfo(type="manual"))


def run(body: str, exprs: Expressions | None = None) -> Execution:
    return Engine(flow_of(body), exprs or Expressions()).run(new_execution(), {})


def doc_logs(execution: Execution) -> list[dict[str, Any]]:
    doc = json.loads(execution.to_json())
    lines: list[dict[str, Any]] = doc.get("logs", [])
    return lines


FLAKY = """\
tasks:
  - id: hello
    type: core.Log
    message: "hello {{ flow.id }}"
  - id: flaky
    type: core.Fail
    condition: "{{ taskrun.attemptsCount < 2 }}"
    errorMessage: "boom {{ taskrun.attemptsCount }}"
    retry: {type: constant, interval: PT0S, maxAttempts: 3}
  - id: done
    type: core.Log
    level: DEBUG
    message: "done"
"""


def test_log_lines_retries_and_their_tasks_are_in_the_document() -> None:
    execution = run(FLAKY)
    assert execution.state == State.SUCCESS, execution.error
    lines = doc_logs(execution)
    assert [list(line) for line in lines] == [KEYS] * 4
    prefix = execution.id[:16]
    assert [(x["level"], x["taskId"], x["taskRunId"], x["attempt"], x["message"])
            for x in lines] == [
        ("INFO", "hello", f"{prefix}-0", 1, "hello f"),
        ("WARN", "flaky", f"{prefix}-1", 1, "attempt 1 failed: boom 0, retrying in 0s"),
        ("WARN", "flaky", f"{prefix}-1", 2, "attempt 2 failed: boom 1, retrying in 0s"),
        ("DEBUG", "done", f"{prefix}-2", 1, "done"),
    ]
    times = [datetime.fromisoformat(x["ts"]) for x in lines]
    assert all(str(t.tzinfo) == "UTC" for t in times)
    assert times == sorted(times)
    assert "logsDropped" not in json.loads(execution.to_json())


def test_a_final_failure_is_an_error_line_and_allow_failure_a_warning() -> None:
    execution = run("""\
tasks:
  - id: tolerated
    type: core.Fail
    errorMessage: "not fatal"
    allowFailure: true
  - id: fatal
    type: core.Fail
    errorMessage: "fatal {{ taskrun.attemptsCount }}"
    retry: {type: constant, interval: PT0S, maxAttempts: 2}
errors:
  - id: cleanup
    type: core.Log
    level: ERROR
    message: "cleaning up after {{ flow.id }}"
""")
    assert execution.state == State.FAILED
    assert [(x["level"], x["taskId"], x["attempt"], x["message"])
            for x in doc_logs(execution)] == [
        ("WARN", "tolerated", 1,
         "attempt 1 failed: not fatal (allowFailure: the execution goes on)"),
        ("WARN", "fatal", 1, "attempt 1 failed: fatal 0, retrying in 0s"),
        ("ERROR", "fatal", 2, "attempt 2 failed: fatal 1"),
        ("ERROR", "cleanup", 1, "cleaning up after f"),
    ]


def test_a_late_failure_is_an_error_line_of_its_task_run() -> None:
    execution = run("tasks:\n  - id: send\n    type: core.Log\n    message: queued\n")
    fail_late(execution, "send", "delivery failed:\n record too large")
    assert execution.state == State.FAILED
    last = doc_logs(execution)[-1]
    assert (last["level"], last["taskId"], last["taskRunId"], last["attempt"],
            last["message"]) == ("ERROR", "send", f"{execution.id[:16]}-0", 1,
                                 "delivery failed: record too large")


def test_a_flow_that_logs_nothing_allocates_no_list_and_writes_no_field() -> None:
    execution = run("tasks:\n  - id: s\n    type: core.Set\n    values: {a: 1}\n")
    assert execution.logs is None and execution.logs_dropped == 0
    doc = json.loads(execution.to_json())
    assert "logs" not in doc and "logsDropped" not in doc


def test_a_secret_rendered_into_a_message_is_masked_everywhere(
        caplog: pytest.LogCaptureFixture) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    exprs = Expressions(Secrets(environ={"WAXFLOW_SECRET_TOKEN": secret}))
    with caplog.at_level(logging.INFO, logger="waxflow.task"):
        execution = run("""\
tasks:
  - id: leak
    type: core.Log
    message: "token={{ secret('TOKEN') }} upper={{ secret('TOKEN') | upper }}"
  - id: fail
    type: core.Fail
    errorMessage: "refused {{ secret('TOKEN') }}"
    allowFailure: true
""", exprs)
    data = execution.to_json().decode()
    assert secret not in data and secret.upper() not in data
    messages = [x["message"] for x in doc_logs(execution)]
    assert messages[0] == f"token={MASK} upper={MASK}"
    assert MASK in messages[1]
    printed = "\n".join(r.getMessage() for r in caplog.records)
    assert f"token={MASK}" in printed and secret not in printed


def test_the_bound_keeps_the_first_lines_and_the_latest(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setattr(execution_module, "LOG_LINES", 5)
    execution = run("""\
tasks:
  - id: each
    type: core.ForEach
    values: "{{ range(12) | list }}"
    tasks:
      - id: say
        type: core.Log
        message: "line {{ taskrun.value }}"
""")
    assert execution.state == State.SUCCESS, execution.error
    doc = json.loads(execution.to_json())
    assert [x["message"] for x in doc["logs"]] == [
        "line 0", "line 1", "line 2", "line 3", "line 11"]
    assert doc["logsDropped"] == 7
    assert "truncated" not in doc  # the bound is not a trim: the document is whole


def test_a_zero_bound_keeps_no_line_but_counts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execution_module, "LOG_LINES", 0)
    execution = run(FLAKY)
    doc = json.loads(execution.to_json())
    assert "logs" not in doc and doc["logsDropped"] == 4


@pytest.mark.parametrize(("value", "expected"), [
    ("", 200), ("7", 7), ("1_000", 1000), ("-3", 0), ("many", 200)])
def test_the_bound_comes_from_the_environment(value: str, expected: int) -> None:
    code = "import waxflow.execution as e; print(e.LOG_LINES)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"WAXFLOW_EXECUTION_LOG_LINES": value, "PATH": ""}, check=True)
    assert out.stdout.strip() == str(expected)
    if value == "many":
        assert "WAXFLOW_EXECUTION_LOG_LINES='many' is not a number of lines" in out.stderr


def test_a_huge_message_is_cut_when_recorded() -> None:
    execution = new_execution()
    limit = execution_module.VALUE_MAX_BYTES
    execution.log("INFO", "é" * (limit + 10))
    assert execution.logs is not None
    kept = execution_module.TEXT_KEEP_CHARS
    # as the document would cut it: its first characters and the size in UTF-8 bytes
    assert execution.logs[0]["message"] == (
        "é" * kept + f"... [truncated: {2 * (limit + 10)} bytes]")
    assert doc_logs(execution)[0]["message"] == execution.logs[0]["message"]


def test_parallel_tasks_lose_no_line() -> None:
    execution = run("""\
tasks:
  - id: fan
    type: core.Parallel
    concurrency: 4
    tasks:
""" + "".join(f"""\
      - id: p{i}
        type: core.Log
        message: "from p{i}"
""" for i in range(8)))
    assert execution.state == State.SUCCESS, execution.error
    lines = doc_logs(execution)
    assert sorted(x["message"] for x in lines) == sorted(f"from p{i}" for i in range(8))
    ids = {x["taskId"]: x["taskRunId"] for x in lines}
    runs = {r.task_id: execution.task_run_id(i) for i, r in enumerate(execution.task_runs)}
    assert all(ids[t] == runs[t] for t in ids)


def test_a_paused_retry_keeps_the_lines_of_before_the_pause() -> None:
    engine = Engine(flow_of(FLAKY.replace("PT0S", "PT1H")), Expressions())
    execution = new_execution()
    ctx = engine.begin(execution, {}, deferrable=True)
    assert engine.advance(ctx) == 3600.0
    assert engine.advance(ctx) == 3600.0
    assert engine.advance(ctx) is None
    assert execution.state == State.SUCCESS
    assert [(x["taskId"], x["attempt"], x["message"]) for x in doc_logs(execution)] == [
        ("hello", 1, "hello f"),
        ("flaky", 1, "attempt 1 failed: boom 0, retrying in 3600s"),
        ("flaky", 2, "attempt 2 failed: boom 1, retrying in 3600s"),
        ("done", 1, "done"),
    ]


def test_stderr_follows_the_job_level_the_document_keeps_every_line(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="waxflow.task"):
        execution = run(FLAKY)
    printed = [r.getMessage() for r in caplog.records if r.name == "waxflow.task"]
    tag = execution.id[:12]
    assert printed == [f"[{tag} flaky] attempt 1 failed: boom 0, retrying in 0s",
                       f"[{tag} flaky] attempt 2 failed: boom 1, retrying in 0s"]
    assert [r.levelno for r in caplog.records if r.name == "waxflow.task"] == [
        logging.WARNING] * 2
    assert [x["level"] for x in doc_logs(execution)] == ["INFO", "WARN", "WARN", "DEBUG"]


@pytest.mark.parametrize(("given", "expected"), [
    ("INFO", "INFO"), ("warn", "WARN"), ("WARNING", "WARN"), (" error ", "ERROR"),
    ("CRITICAL", "ERROR"), ("trace", "TRACE"), ("debug", "DEBUG"), ("loud", "INFO")])
def test_levels_are_kestras(given: str, expected: str) -> None:
    assert line_level(given) == expected
    assert expected in LINE_LEVELS


def test_python_levels_of_the_line_levels() -> None:
    assert [python_level(x) for x in LINE_LEVELS] == [
        logging.DEBUG, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]
