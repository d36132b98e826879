"""Pre-flight (waxflow.dataflows.preflight): a flow that cannot work here never starts.

Real flow files in a temporary directory, real imports, an explicit environment.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from waxflow.dataflows.preflight import preflight
from waxflow.errors import FlowError, Problem

HEAD = """\
id: pf
namespace: tests.preflight
triggers:
  - {id: in, type: kafka.RealtimeTrigger, topic: t, groupId: g, valueDeserializer: JSON}
"""


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / f"flow-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(HEAD + body)
    return path


def problems(path: Path, environ: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(FlowError) as info:
        preflight(path, environ=environ or {})
    return info.value.problems


def position(path: Path, needle: str) -> tuple[int, int]:
    """1-based line and column where the YAML value holding ``needle`` starts (its quote)."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            col = line.index(needle)
            return number, line.rindex('"', 0, col) + 1
    raise AssertionError(needle)


CLEAN = """\
tasks:
  - id: first
    type: core.Set
    values:
      url: "{{ env.API_URL }}/{{ env['API_PATH'] }}?k={{ secret('API_KEY') }}"
      opt: "{{ env.OPTIONAL | default('x') }} {{ env.OTHER is defined }} {{ 'NOT_SET' in env }}"
      keys: "{{ env.keys() | list | length }} {{ env.get('ALSO_NOT_SET') }}"
  - id: call
    type: core.Python
    function: "tests.flow_funcs:slow"
    args: {ms: "{{ outputs.first.url | length }}"}
  - id: route
    type: core.Switch
    value: "{{ outputs.call.id }}"
    cases:
      a:
        - id: in_a
          type: core.Sequential
          tasks:
            - {id: a1, type: core.Log, message: "{{ outputs.first.url }}"}
            - {id: a2, type: core.Log, message: "{{ outputs.a1 is defined }} {{ outputs.call }}"}
          errors:
            - {id: a_err, type: core.Log, message: "{{ outputs.a1 | default('') }}"}
    defaults:
      - {id: dflt, type: core.Log, message: "{{ outputs.route2 | default('none') }}"}
  - id: after
    type: core.Log
    message: "{{ outputs.in_a | default({}) }} {{ outputs.dflt | default({}) }}"
  - id: off
    type: core.Sequential
    disabled: true
    tasks:
      - {id: never, type: core.Python, function: "no_such_module_xyz:f", args: {a: "{{ env.NO }}"}}
  - id: par
    type: core.Parallel
    tasks:
      - {id: p1, type: core.Log, message: "{{ outputs.after | default('') }} {{ outputs.first }}"}
      - {id: p2, type: core.Log, message: "{{ secret(trigger.value.name) }} {{ trigger.value }}"}
errors:
  - id: report
    type: core.Log
    message: "{{ outputs.first.url }} {{ outputs.p1 | default('') }} {{ secret('api-key') }}"
"""
CLEAN_ENV = {"API_URL": "http://x", "API_PATH": "p", "WAXFLOW_SECRET_API_KEY": "key-123-456"}


def test_a_flow_that_can_work_passes(tmp_path: Path) -> None:
    assert preflight(write(tmp_path, CLEAN), environ=CLEAN_ENV) is None


def test_a_secret_from_the_secrets_file_is_defined(tmp_path: Path) -> None:
    file = tmp_path / "secrets.yaml"
    file.write_text("API_KEY: from-the-file-1\n")
    env = {**CLEAN_ENV, "WAXFLOW_SECRETS_FILE": str(file)}
    del env["WAXFLOW_SECRET_API_KEY"]
    assert preflight(write(tmp_path, CLEAN), environ=env) is None


def test_an_invalid_flow_gets_the_validation_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "tasks:\n  - {id: a, type: core.Log, mesage: x}\n")
    found = problems(path)
    assert [p.message for p in found] == ["missing required property 'message'",
                                          "unknown property 'mesage'; did you mean 'message'?"]


def test_undefined_secret(tmp_path: Path) -> None:
    path = write(tmp_path, """\
tasks:
  - id: a
    type: http.Request
    uri: "http://h/?t={{ secret('API_KEY') }}"
    headers:
      X-Known: "{{ secret('KNOWN') }}"
      X-Other: "{{ secret(name='other-key') | upper }}"
""")
    found = problems(path, {"WAXFLOW_SECRET_KNOWN": "known-value-42"})
    assert [(p.line, p.column, p.field) for p in found] == [
        (*position(path, "secret('API_KEY')"), "tasks[0].uri"),
        (*position(path, "other-key"), "tasks[0].headers.X-Other"),
    ]
    assert found[0].message == (
        "secret 'API_KEY' is not defined: set WAXFLOW_SECRET_API_KEY or add it to a "
        "YAML/JSON file named by $WAXFLOW_SECRETS_FILE")
    assert "WAXFLOW_SECRET_OTHER_KEY" in found[1].message
    error = FlowError(found)
    assert str(error).startswith(f"{path}:{found[0].line}:{found[0].column}: tasks[0].uri: ")
    assert "known-value-42" not in str(error)


def test_undefined_secret_names_the_secrets_file(tmp_path: Path) -> None:
    file = tmp_path / "secrets.yaml"
    file.write_text("OTHER: other-secret-value-7\n")
    path = write(tmp_path, "tasks:\n"
                           "  - {id: a, type: core.Log, message: \"{{ secret('TOKEN') }}\"}\n")
    [problem] = problems(path, {"WAXFLOW_SECRETS_FILE": str(file)})
    assert problem.message == (f"secret 'TOKEN' is not defined: set WAXFLOW_SECRET_TOKEN or "
                               f"add 'TOKEN' to the secrets file {file}")
    assert "other-secret-value-7" not in str(FlowError(problem))


def test_unusable_secrets_file_is_one_problem(tmp_path: Path) -> None:
    file = tmp_path / "secrets.yaml"
    file.write_text("A: leaked-if-quoted-1\n  b: [broken\n")
    path = write(tmp_path, """\
tasks:
  - {id: a, type: core.Log, message: "{{ secret('A') }}"}
  - {id: b, type: core.Log, message: "{{ secret('B') }}"}
""")
    [problem] = problems(path, {"WAXFLOW_SECRETS_FILE": str(file)})
    assert f"secrets file {file} is not valid YAML or JSON" in problem.message
    assert "leaked-if-quoted-1" not in problem.message


def test_python_function_that_cannot_be_loaded(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    mod = f"pf_broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{mod}.py").write_text(
        "import os\nraise RuntimeError('cannot start with ' + os.environ['PF_TOKEN'])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PF_TOKEN", "pf-token-value-9")
    path = write(tmp_path, f"""\
tasks:
  - {{id: a, type: core.Python, function: "no_such_module_xyz.sub:run"}}
  - {{id: b, type: core.Python, function: "tests.flow_funcs:no_such_function"}}
  - {{id: c, type: core.Python, function: "os:sep"}}
  - {{id: d, type: core.Python, function: "{mod}:run"}}
  - {{id: e, type: core.Python, function: "tests.flow_funcs:slow"}}
""")
    found = problems(path, {"WAXFLOW_SECRET_PF": "pf-token-value-9"})
    assert [p.field for p in found] == [f"tasks[{i}].function" for i in range(4)]
    assert found[0].message.startswith(
        "cannot import module 'no_such_module_xyz.sub' of function 'no_such_module_xyz.sub:run' "
        "(ModuleNotFoundError: No module named 'no_such_module_xyz')")
    assert "PYTHONPATH" in found[0].message
    assert "has no 'no_such_function'" in found[1].message
    assert found[2].message == "'os:sep' is not callable: name a function"
    assert found[3].message == (f"importing module '{mod}' of function '{mod}:run' failed: "
                                "RuntimeError: cannot start with ******")


def test_outputs_of_a_task_that_cannot_have_run(tmp_path: Path) -> None:
    path = write(tmp_path, """\
tasks:
  - id: early
    type: core.Log
    message: "{{ outputs.late.x }}"
  - id: sw
    type: core.Switch
    value: "{{ outputs.early }}"
    cases:
      a:
        - {id: in_a, type: core.Set, values: {v: "{{ outputs.sw.value }}"}}
      b:
        - {id: in_b, type: core.Log, message: "{{ outputs.in_a.v }}"}
    errors:
      - {id: sw_err, type: core.Log, message: "{{ outputs.in_a.v }} {{ outputs['sw'] }}"}
  - id: par
    type: core.Parallel
    tasks:
      - {id: p1, type: core.Log, message: "{{ outputs.p2 }}"}
      - {id: p2, type: core.Log, message: "{{ outputs.p1 }} {{ outputs.p2 }}"}
  - {id: off, type: core.Log, message: "x", disabled: true}
  - id: late
    type: core.Log
    message: "{{ outputs.nosuchtask }} {{ outputs.lat }} {{ outputs.off }} {{ outputs.in_b }}"
errors:
  - {id: handler, type: core.Log, message: "{{ outputs.p1 }} {{ outputs.later_handler }}"}
  - {id: later_handler, type: core.Log, message: "{{ outputs.handler }}"}
""")
    found = {(p.field, p.message.split(":", 1)[0]): p.message for p in problems(path)}
    assert set(found) == {
        ("tasks[0].message", "outputs.late"),
        ("tasks[1].cases.a[0].values.v", "outputs.sw"),
        ("tasks[1].cases.b[0].message", "outputs.in_a"),
        ("tasks[1].errors[0].message", "outputs.sw"),
        ("tasks[2].tasks[0].message", "outputs.p2"),
        ("tasks[2].tasks[1].message", "outputs.p1"),
        ("tasks[2].tasks[1].message", "outputs.p2"),
        ("tasks[4].message", "outputs.nosuchtask"),
        ("tasks[4].message", "outputs.lat"),
        ("tasks[4].message", "outputs.off"),
        ("errors[0].message", "outputs.later_handler"),
    }
    assert "comes later in the flow" in found[("tasks[0].message", "outputs.late")]
    assert "another branch" in found[("tasks[1].cases.b[0].message", "outputs.in_a")]
    assert "runs inside task 'sw'" in found[("tasks[1].cases.a[0].values.v", "outputs.sw")]
    assert "runs inside task 'sw' (or as its errors handler)" in found[
        ("tasks[1].errors[0].message", "outputs.sw")]
    assert "in parallel" in found[("tasks[2].tasks[1].message", "outputs.p1")]
    assert "cannot read its own outputs" in found[("tasks[2].tasks[1].message", "outputs.p2")]
    assert found[("tasks[4].message", "outputs.nosuchtask")] == (
        "outputs.nosuchtask: there is no task 'nosuchtask' in this flow; outputs are read by "
        "task id")
    assert "(did you mean 'late'?)" in found[("tasks[4].message", "outputs.lat")]
    assert "is disabled" in found[("tasks[4].message", "outputs.off")]


def test_environment_variables(tmp_path: Path) -> None:
    path = write(tmp_path, """\
tasks:
  - id: a
    type: core.Log
    message: "{{ env.MISSING }} {{ env['ALSO_MISSING'] }} {{ env.PRESENT }}"
  - id: b
    type: core.Log
    message: "{{ env.WAXFLOW_SECRET_TOKEN }}"
""")
    found = problems(path, {"PRESENT": "1", "WAXFLOW_SECRET_TOKEN": "tok-value-3"})
    assert [p.message for p in found] == [
        "environment variable 'ALSO_MISSING' is not set: set it before `waxflow run`, or "
        "write `env.ALSO_MISSING | default(...)`",
        "environment variable 'MISSING' is not set: set it before `waxflow run`, or write "
        "`env.MISSING | default(...)`",
        "env.WAXFLOW_SECRET_TOKEN is not visible to expressions (it holds a secret): read it "
        "with secret('...') instead",
    ]
    assert (found[0].line, found[0].column) == position(path, "env.MISSING")


def test_every_problem_at_once_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, """\
tasks:
  - id: a
    type: core.Set
    values:
      k: "{{ secret('NOPE') }}"
  - {id: b, type: core.Python, function: "nowhere_module_abc:f"}
  - id: sw
    type: core.If
    condition: "{{ env.NOT_THERE }}"
    then:
      - {id: c, type: core.Log, message: "{{ outputs.ghost }}"}
    else:
      - {id: d, type: core.Log, message: "{{ outputs.c }}"}
""")
    found = problems(path)
    assert [p.field for p in found] == ["tasks[0].values.k", "tasks[1].function",
                                        "tasks[2].condition", "tasks[2].then[0].message",
                                        "tasks[2].else[0].message"]
    assert [p.line for p in found] == sorted(p.line or 0 for p in found)
    assert all(p.file == str(path) and p.column for p in found)


def test_finally_after_execution_and_outputs_are_checked(tmp_path: Path) -> None:
    """Secrets, env and outputs in `finally`, `afterExecution` and the flow's `outputs`:
    those lists see every task of `tasks` (and `finally` those of `errors`), `afterExecution`
    also `finally`'s; an unknown task or an undefined secret is refused at its line."""
    path = write(tmp_path, """\
tasks:
  - {id: work, type: core.Set, values: {n: 1}}
errors:
  - {id: oops, type: core.Log, message: failed}
finally:
  - {id: tidy, type: core.Log, message: "{{ outputs.work.values.n }} {{ outputs.nope }}"}
afterExecution:
  - {id: tell, type: core.Log, message: "{{ outputs.tidy }} {{ secret('NOT_DEFINED') }}"}
outputs:
  - {id: total, type: INT, value: "{{ outputs.work.values.n }} {{ env.NOT_SET_HERE }}"}
""")
    found = [(p.field, p.message) for p in problems(path)]
    fields = sorted({f for f, _ in found})
    assert fields == ["afterExecution[0].message", "finally[0].message", "outputs[0].value"], \
        found
    text = " ".join(m for _, m in found)
    assert "nope" in text and "NOT_DEFINED" in text and "NOT_SET_HERE" in text
    assert "'work'" not in text and "outputs.work" not in text  # it ran before them


def test_python_functions_of_child_flows_are_checked_at_the_parents_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child flow's core.Python (and a grandchild's) is import-checked as the parent's own
    is, reported at the flowId line of the parent's task naming the child and its task;
    disabled tasks, and a child reached twice, are checked once or not at all."""
    flows = tmp_path / "flows"
    flows.mkdir()
    monkeypatch.setenv("WAXFLOW_FLOWS_PATH", str(flows))
    (flows / "child.yaml").write_text("""\
id: child
namespace: tests.pf
variables: {grand: grandchild}
tasks:
  - {id: ok, type: core.Python, function: "tests.flow_funcs:slow"}
  - {id: bad, type: core.Python, function: "no_such_module_pf:run"}
  - id: off
    type: core.Sequential
    disabled: true
    tasks:
      - {id: never, type: core.Python, function: "no_such_module_off:run"}
  - {id: deeper, type: core.Subflow, namespace: tests.pf, flowId: "{{ vars.grand }}"}
""")
    (flows / "grandchild.yaml").write_text("""\
id: grandchild
namespace: tests.pf
tasks:
  - {id: g, type: core.Python, function: "os:sep"}
  - {id: loop, type: core.Subflow, namespace: tests.pf, flowId: child}
""")
    path = write(tmp_path, """\
tasks:
  - {id: own, type: core.Python, function: "no_such_module_top:run"}
  - id: call
    type: core.Subflow
    namespace: tests.pf
    flowId: child
""")
    found = problems(path)
    assert [(p.field, p.line) for p in found] == [
        ("tasks[0].function", 6), ("tasks[1].flowId", 10), ("tasks[1].flowId", 10)]
    grand, child = sorted(p.message for p in found[1:])  # " > " sorts before ": "
    assert child.startswith(
        "child flow tests.pf.child: task 'bad': cannot import module 'no_such_module_pf' of "
        "function 'no_such_module_pf:run' (ModuleNotFoundError"), child
    assert grand == ("child flow tests.pf.child > tests.pf.grandchild: task 'g': "
                           "'os:sep' is not callable: name a function")
    # the same child, all fine: no problem
    (flows / "child.yaml").write_text("""\
id: child
namespace: tests.pf
tasks:
  - {id: ok, type: core.Python, function: "tests.flow_funcs:slow"}
""")
    clean = write(tmp_path, """\
tasks:
  - {id: call, type: core.Subflow, namespace: tests.pf, flowId: child}
""")
    preflight(clean, environ={})
