"""Issue 13: text given to ``render()`` may come from a record, so it reads the execution's
data and nothing of the process: no ``read()`` (another execution's internal-storage files),
no ``secret()``, no ``env``, and no result holding a secret's value (a SECRET input). Through
the real engine, expressions and internal storage; the refused value never reaches the
execution's document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from waxflow.connectors.storage import Storage
from waxflow.dataflows import subflow_runner  # noqa: F401  # installs read() on storage
from waxflow.dataflows.compiler import flow_expressions
from waxflow.dataflows.spec import parse_flow_text
from waxflow.execution import Execution, TriggerInfo
from waxflow.operators.engine import Engine

FLOW = """\
id: echo
namespace: t
inputs:
  - {id: token, type: SECRET, defaults: hunter2-token}
variables:
  greeting: "hello {{ trigger.value.name }}"
  stored: "{{ read(trigger.value.uri) }}"
tasks:
  - {id: show, type: core.Return, format: "{{ render(trigger.value.text) }}"}
"""


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_STORAGE", str(tmp_path / "storage"))
    monkeypatch.setenv("WAXFLOW_SECRET_API_KEY", "sk-live-0123456789")
    monkeypatch.setenv("DB_PASSWORD", "pg-pass-9876543210")


def run(value: dict[str, Any], source: str = FLOW) -> Execution:
    flow = parse_flow_text(source, "echo.yaml")
    execution = Execution(id="e1", namespace="t", flow_id="echo",
                          trigger=TriggerInfo(type="manual"))
    return Engine(flow, flow_expressions(flow)).run(execution, {"value": value})


def result(execution: Execution) -> Any:
    assert execution.state.name == "SUCCESS", execution.document()
    out = {r.task_id: r.outputs for r in execution.task_runs}["show"]
    assert out is not None
    return out["value"]


def refused(execution: Execution, *hidden: str) -> str:
    assert execution.state.name == "FAILED", execution.document()
    assert execution.error is not None
    text = json.dumps(execution.document())
    for value in hidden:
        assert value not in text
    return str(execution.error["message"])


def test_record_text_renders_with_the_execution_data() -> None:
    assert result(run({"text": "{{ trigger.value.n * 2 }} {{ render(vars.greeting) }}",
                       "n": 21, "name": "Ada"})) == "42 hello Ada"


def test_record_text_cannot_read_another_executions_file() -> None:
    uri = Storage().put_data("t/other/e0/private.txt", b"card 4111-1111-1111-1111")
    message = refused(run({"text": f"{{{{ read('{uri}') }}}}"}), "4111-1111")
    assert "read() is not available in text given to render()" in message


def test_the_flow_file_itself_may_still_read_files_and_secrets() -> None:
    """Text that is one of the flow's ``variables`` was written in the flow file: its first
    pass reads what the flow's own expressions do; what it renders to is data again."""
    uri = Storage().put_data("t/other/e0/public.txt", b"shared text")
    own = FLOW.replace('format: "{{ render(trigger.value.text) }}"',
                       'format: "{{ read(trigger.value.uri) }} {{ render(vars.stored) }}"')
    assert result(run({"uri": uri}, own)) == "shared text shared text"
    keyed = FLOW.replace('greeting: "hello {{ trigger.value.name }}"',
                         'greeting: "key {{ secret(\'API_KEY\') | length }}"').replace(
        'format: "{{ render(trigger.value.text) }}"', 'format: "{{ render(vars.greeting) }}"')
    assert result(run({}, keyed)) == "key 18"
    # a variable rendering to record text: that text is data
    data = FLOW.replace('format: "{{ render(trigger.value.text) }}"',
                        'format: "{{ render(vars.greeting) }}"')
    assert "env is not available in text given to render()" in refused(
        run({"name": "{{ env.DB_PASSWORD }}"}, data), "pg-pass-9876543210")
    assert result(run({"name": "{{ 6 * 7 }}"}, data)) == "hello 42"


def test_record_text_cannot_read_secrets_env_or_secret_inputs() -> None:
    assert "secret() is not available in text given to render()" in refused(
        run({"text": "{{ secret('API_KEY') }}"}), "sk-live-0123456789")
    assert "env is not available in text given to render()" in refused(
        run({"text": "{{ env.DB_PASSWORD }}"}), "pg-pass-9876543210")
    assert "env is not available in text given to render()" in refused(
        run({"text": "{{ env['DB_PASSWORD'] | default('x') }}"}), "pg-pass-9876543210")
    assert "rendered to a secret's value" in refused(
        run({"text": "{{ inputs.token }}"}), "hunter2-token")
    # nor through a second render
    assert "secret() is not available" in refused(
        run({"text": "{{ render(\"{{ secret('API_KEY') }}\") }}"}), "sk-live-0123456789")
