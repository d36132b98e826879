"""Issue 13, the flow language keeps its promises, as ``waxflow validate`` / ``run`` see it:
Kestra's blueprint ``extend:`` (accepted, one note), templates in ``pluginDefaults`` (checked
at the default's own line) and the child flow of a ``core.Subflow``/``core.ForEachItem``
(found, valid, taking the inputs the parent gives), each reported at ``file:line``.

Real ``waxflow`` processes on real files; ``run`` gets a closed bootstrap port, so a flow it
did not refuse would hang or show connect errors instead of failing within seconds.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from tests.flow_helpers import WAXFLOW
from waxflow.dataflows.preflight import NOTE, preflight, validate
from waxflow.errors import FlowError

CHILD = """\
id: child
namespace: shop.children
inputs:
  - {id: n, type: INT}
  - {id: who, type: STRING, defaults: nobody}
outputs:
  - {id: doubled, type: INT, value: "{{ inputs.n * 2 }}"}
tasks:
  - {id: say, type: core.Log, message: "{{ inputs.who }} gave {{ inputs.n }}"}
"""

TRIGGER = """\
triggers:
  - id: orders
    type: kafka.RealtimeTrigger
    topic: orders
    groupId: g
    valueDeserializer: JSON
"""


def cli(*args: str, flows: Path | None = None, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WAXFLOW_BOOTSTRAP": "127.0.0.1:1"}
    env.pop("WAXFLOW_FLOWS_PATH", None)
    if flows is not None:
        env["WAXFLOW_FLOWS_PATH"] = str(flows)
    return subprocess.run([WAXFLOW, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def line_of(text: str, marker: str) -> int:
    (line,) = [i for i, t in enumerate(text.splitlines(), start=1) if marker in t]
    return line


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    folder = tmp_path / "flows" / "nested"
    folder.mkdir(parents=True)
    (folder / "child.yaml").write_text(CHILD, encoding="utf-8")
    (tmp_path / "flows" / "broken.yml").write_text("id: [", encoding="utf-8")
    return tmp_path / "flows"


def write(tmp_path: Path, body: str, name: str = "parent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"id: parent\nnamespace: shop\n{body}", encoding="utf-8")
    return path


# ------------------------------------------------------------------ extend
EXTEND = """\
extend:
  title: Log every order
  description: |
    A blueprint as Kestra publishes it.
  tags: [Kafka, Getting Started]
  ee: false
  demo: true
tasks:
  - {id: say, type: core.Log, message: "{{ trigger.value }}"}
"""


def test_extend_is_accepted_with_one_note_on_validate(tmp_path: Path) -> None:
    path = write(tmp_path, TRIGGER + EXTEND)
    res = cli("validate", str(path))
    assert res.returncode == 0, res.stderr
    notes = [line for line in res.stdout.splitlines() if "note:" in line]
    assert notes == [f"{path}:{line_of(path.read_text(), 'extend:')}:1: extend: note: Kestra "
                     "blueprint metadata (title, description, tags...): ignored by waxflow"]
    assert "valid flow shop.parent" in res.stdout


def test_extend_note_is_logged_by_run(tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, TRIGGER + EXTEND)
    with caplog.at_level(logging.INFO, logger="waxflow.dataflows.preflight"):
        preflight(path, environ={})
    assert [r.getMessage() for r in caplog.records].count(
        f"{path}:{line_of(path.read_text(), 'extend:')}:1: extend: note: Kestra blueprint "
        "metadata (title, description, tags...): ignored by waxflow") == 1


def test_extend_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "extend: [a]\ntasks:\n  - {id: s, type: core.Log, message: x}\n")
    res = cli("validate", str(path))
    assert res.returncode == 1
    assert f"{path}:3:" in res.stderr and "extend" in res.stderr, res.stderr


# ------------------------------------------------------------------ pluginDefaults templates
DEFAULTS = """\
pluginDefaults:
  - type: io.kestra.plugin.core.log.Log
    values:
      message: "{{ trigger.value | nope }}"
      level: INFO
  - type: io.kestra.plugin.kafka
    values:
      properties:
        sasl.password: "{{ trigger.value.pw }}"
  - type: core.Return
    values:
      format: "{{ trigger.value.n + }}"
tasks:
  - {id: say, type: core.Log}
  - {id: back, type: core.Return}
"""


def test_a_bad_template_in_a_default_is_reported_at_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, TRIGGER + DEFAULTS)
    text = path.read_text()
    res = cli("validate", str(path))
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert any(line.startswith(f"{path}:{line_of(text, 'nope')}:")
               and "pluginDefaults[0].values.message" in line and "nope" in line
               for line in lines), lines
    # a start-time property reads no record data, in a default as in a trigger
    assert any(line.startswith(f"{path}:{line_of(text, 'sasl.password')}:")
               and "'trigger' is not available here" in line for line in lines), lines
    assert any(line.startswith(f"{path}:{line_of(text, 'trigger.value.n +')}:")
               and "pluginDefaults[2].values.format" in line for line in lines), lines
    # never at the tasks the defaults apply to
    assert not any(f":{line_of(text, 'id: say')}:" in line
                   or f":{line_of(text, 'id: back')}:" in line for line in lines), lines
    assert "Traceback" not in res.stderr


def test_good_templates_in_defaults_pass_and_apply(tmp_path: Path) -> None:
    path = write(tmp_path, TRIGGER + """\
pluginDefaults:
  - type: core.Log
    values: {message: "order {{ trigger.value.id }} of {{ flow.id }}"}
tasks:
  - {id: say, type: core.Log}
""")
    flow, notes = validate(path)
    assert notes == []
    assert flow.tasks[0].message == "order {{ trigger.value.id }} of {{ flow.id }}"


def test_run_checks_secrets_and_env_of_defaults_at_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, TRIGGER + """\
pluginDefaults:
  - type: core.Log
    values:
      message: "{{ secret('MISSING_TOKEN') }} {{ env.NOT_SET_HERE }} {{ outputs.nope.x }}"
tasks:
  - {id: say, type: core.Log}
""")
    with pytest.raises(FlowError) as err:
        preflight(path, environ={})
    line = line_of(path.read_text(), "MISSING_TOKEN")
    messages = [(p.line, p.message) for p in err.value.problems]
    assert [m for ln, m in messages if ln == line and "MISSING_TOKEN" in m], messages
    assert [m for ln, m in messages if ln == line and "NOT_SET_HERE" in m], messages
    assert [m for ln, m in messages if ln == line and "no task 'nope'" in m], messages
    assert all(ln == line for ln, _ in messages), messages


# ------------------------------------------------------------------ Subflow children
def test_a_child_that_validates_and_takes_the_inputs_passes(tmp_path: Path,
                                                            flows: Path) -> None:
    path = write(tmp_path, TRIGGER + """\
variables: {child: child}
tasks:
  - id: handle
    type: io.kestra.plugin.core.flow.Subflow
    namespace: shop.children
    flowId: "{{ vars.child }}"
    inputs: {n: "{{ trigger.value.n }}", who: ada}
  - id: each
    type: core.ForEachItem
    items: "{{ trigger.value.uri }}"
    namespace: shop.children
    flowId: child
    inputs: {n: 3}
""")
    res = cli("validate", str(path), flows=flows)
    assert res.returncode == 0, res.stderr
    assert "note:" not in res.stdout


def test_child_problems_are_at_the_parent_task(tmp_path: Path, flows: Path) -> None:
    (flows / "bad.yaml").write_text("id: bad\nnamespace: shop.children\ntasks:\n"
                                    "  - {id: x, type: core.Nope}\n", encoding="utf-8")
    path = write(tmp_path, TRIGGER + """\
tasks:
  - id: missing
    type: core.Subflow
    namespace: shop.children
    flowId: nowhere
  - id: invalid
    type: core.Subflow
    namespace: shop.children
    flowId: bad
  - id: inputs
    type: core.Subflow
    namespace: shop.children
    flowId: child
    inputs:
      n: twelve
      whom: ada
  - id: required
    type: core.ForEachItem
    items: "{{ trigger.value.uri }}"
    namespace: shop.children
    flowId: child
""")
    text = path.read_text()
    res = cli("validate", str(path), flows=flows)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    got = res.stderr.splitlines()
    lines = text.splitlines()
    required_at = max(i for i, t in enumerate(lines, start=1) if "flowId: child" in t)
    assert got == [
        f"{path}:{line_of(text, 'flowId: nowhere')}:13: tasks[0].flowId: no flow "
        f"shop.children.nowhere among the flow files of $WAXFLOW_FLOWS_PATH={flows}: add its "
        "file there, or set $WAXFLOW_FLOWS_PATH to the directories holding it",
        f"{path}:{line_of(text, 'flowId: bad')}:13: tasks[1].flowId: child flow "
        f"shop.children.bad is not valid: {flows / 'bad.yaml'}:4:19: tasks[0].type: unknown "
        "type 'core.Nope'; did you mean 'core.Set'?",
        f"{path}:{line_of(text, 'n: twelve')}:10: tasks[2].inputs.n: input 'n' (INT) of "
        "child flow shop.children.child: invalid literal for int() with base 10: 'twelve'",
        f"{path}:{line_of(text, 'whom: ada')}:7: tasks[2].inputs.whom: child flow "
        "shop.children.child has no input 'whom' (did you mean 'who'? its inputs: n, who)",
        f"{path}:{required_at}:13: tasks[3].flowId: child flow shop.children.child requires "
        "input 'n' (INT): give it in this task's `inputs`",
    ]


def test_run_refuses_a_missing_child_before_touching_kafka(tmp_path: Path,
                                                           flows: Path) -> None:
    path = write(tmp_path, TRIGGER + "tasks:\n  - {id: s, type: core.Subflow, "
                                     "namespace: shop, flowId: gone}\n")
    res = cli("run", str(path), "--stop-when-idle", "1", flows=flows, timeout=60)
    assert res.returncode != 0
    assert f"{path}:" in res.stderr and "no flow shop.gone among the flow files" in res.stderr
    assert "Traceback" not in res.stderr and "Connect" not in res.stderr, res.stderr


def test_a_child_named_by_record_data_is_a_note(tmp_path: Path, flows: Path) -> None:
    path = write(tmp_path, TRIGGER + """\
tasks:
  - id: route
    type: core.Subflow
    namespace: shop.children
    flowId: "{{ trigger.value.kind }}"
  - id: hidden
    type: core.Subflow
    namespace: "{{ secret('CHILD_NS') }}"
    flowId: child
""")
    text = path.read_text()
    res = cli("validate", str(path), flows=flows)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[:2] == [
        f"{path}:{line_of(text, 'trigger.value.kind')}:13: tasks[0].flowId: {NOTE}the child "
        "flow is named by a template known only when the task runs: it is not checked "
        "before",
        f"{path}:{line_of(text, 'flowId: child')}:13: tasks[1].flowId: {NOTE}the child "
        "flow is named by a template known only when the task runs: it is not checked "
        "before"]


def test_a_disabled_subflow_is_not_checked(tmp_path: Path, flows: Path) -> None:
    path = write(tmp_path, TRIGGER + "tasks:\n  - {id: s, type: core.Subflow, disabled: true, "
                                     "namespace: shop, flowId: gone}\n"
                                     "  - {id: l, type: core.Log, message: x}\n")
    assert cli("validate", str(path), flows=flows).returncode == 0


def test_a_name_that_is_neither_a_name_nor_a_template_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, TRIGGER + "tasks:\n  - {id: s, type: core.Subflow, "
                                     "namespace: 'a b', flowId: '9x'}\n")
    res = cli("validate", str(path))
    assert res.returncode == 1
    assert "namespace 'a b' is not a namespace (letters, digits, _ . -)" in res.stderr
    assert "flowId '9x' is not a flow id" in res.stderr


def test_reads_of_the_child_outputs_are_checked(tmp_path: Path, flows: Path) -> None:
    (flows / "plain.yaml").write_text("id: plain\nnamespace: shop.children\ntasks:\n"
                                      "  - {id: calc, type: core.Return, format: x}\n",
                                      encoding="utf-8")
    path = write(tmp_path, TRIGGER + """\
tasks:
  - {id: handle, type: core.Subflow, namespace: shop.children, flowId: child,
     inputs: {n: 1}}
  - {id: plain, type: core.Subflow, namespace: shop.children, flowId: plain}
  - id: use
    type: core.Log
    message: "{{ outputs.handle.outputs.doubled }} {{ outputs.plain.outputs.calc.value }}"
  - id: wrong
    type: core.Log
    message: "{{ outputs.handle.outputs.double }} {{ outputs.plain.outputs.calk.value }}"
""")
    text = path.read_text()
    res = cli("validate", str(path), flows=flows)
    assert res.returncode == 1
    at = line_of(text, "outputs.handle.outputs.double }}")
    assert res.stderr.splitlines() == [
        f"{path}:{at}:14: tasks[3].message: outputs.handle.outputs.double: child flow "
        "shop.children.child has no output 'double' (did you mean 'doubled'? known: doubled)",
        f"{path}:{at}:14: tasks[3].message: outputs.plain.outputs.calk: child flow "
        "shop.children.plain has no task 'calk' (did you mean 'calc'? known: calc; it "
        "declares no flow-level outputs, so its task outputs are read by task id)"]
