"""Unit tests for the core.* task types (no broker)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import ValidationError

import waxflow.core_tasks as core
from tests.task_helpers import FakeContext, parse_task
from waxflow.tasks import TaskFailure

CALLS: list[tuple[Mapping[str, Any], dict[str, Any]]] = []


def record_call(context: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A core.Python target: returns its arguments plus a value read from the context."""
    CALLS.append((context, kwargs))
    return {"args": kwargs, "seen": context["trigger"]["value"]}


def give_int(context: Mapping[str, Any], n: int = 1) -> int:
    return n * 2


def give_none(context: Mapping[str, Any]) -> None:
    return None


def explode(context: Mapping[str, Any]) -> None:
    raise AttributeError("raised inside the function")


NOT_CALLABLE = 42


def log(task_id: str, message: str = "x") -> dict[str, Any]:
    return {"id": task_id, "type": "core.Log", "message": message}


# --- truthiness and switch keys --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True), (False, False), (None, False),
        (1, True), (0, False), (0.0, False), (-2.5, True),
        ("true", True), ("yes", True), ("x", True), (" 1 ", True),
        ("false", False), ("FALSE", False), (" False ", False), ("0", False), ("-0", False),
        ("", False), ("   ", False),
        ([1], True), ([], False), ({"a": 1}, True),
    ],
)
def test_is_truthy(value: Any, expected: bool) -> None:
    assert core.is_truthy(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, "true"), (False, "false"), (None, ""), (3, "3"), (1.5, "1.5"), ("a", "a")],
)
def test_switch_key(value: Any, expected: str) -> None:
    assert core.switch_key(value) == expected


# --- core.Log --------------------------------------------------------------------------


def test_log_renders_message_at_level() -> None:
    ctx = FakeContext({"trigger": {"offset": 7}})
    assert parse_task(log("l", "offset {{ trigger.offset }}")).run(ctx) is None
    warn = parse_task({**log("w", "{{ trigger.offset }}"), "level": "WARN"})
    warn.run(ctx)
    assert ctx.logs == [("INFO", "offset 7"), ("WARN", "7")]


def test_log_rejects_unknown_level_and_fields() -> None:
    with pytest.raises(ValidationError):
        parse_task({**log("l"), "level": "TRACE"})
    with pytest.raises(ValidationError):
        parse_task({**log("l"), "mesage": "typo"})


# --- core.Switch -----------------------------------------------------------------------


def switch(value: str, **extra: Any) -> Any:
    return parse_task({
        "id": "route", "type": "core.Switch", "value": value,
        "cases": {"refund": [log("r1"), log("r2")], "order": [log("o1")]},
        "defaults": [log("d1")], **extra,
    })


def test_switch_runs_only_the_matching_case_in_order() -> None:
    ctx = FakeContext({"trigger": {"value": {"type": "refund"}}})
    out = switch("{{ trigger.value.type }}").run(ctx)
    assert out == {"value": "refund", "defaults": False}
    assert ctx.ran == ["r1", "r2"]
    assert ctx.parents == ["route"]


def test_switch_falls_back_to_defaults() -> None:
    ctx = FakeContext({"trigger": {"value": {"type": "other"}}})
    assert switch("{{ trigger.value.type }}").run(ctx) == {"value": "other", "defaults": True}
    assert ctx.ran == ["d1"]


def test_switch_yaml_bool_and_int_keys_match_rendered_values() -> None:
    task = parse_task({
        "id": "s", "type": "core.Switch", "value": "{{ flag }}",
        "cases": {True: [log("yes")], False: [log("no")], 2: [log("two")]},
    })
    assert set(task.cases) == {"true", "false", "2"}
    ctx = FakeContext({"flag": True})
    assert task.run(ctx) == {"value": "true", "defaults": False}
    assert ctx.ran == ["yes"]
    ctx = FakeContext({"flag": 2})
    task.run(ctx)
    assert ctx.ran == ["two"]


def test_switch_rejects_keys_equal_after_conversion_and_empty_cases() -> None:
    with pytest.raises(ValidationError, match="same key"):
        parse_task({"id": "s", "type": "core.Switch", "value": "x",
                    "cases": {True: [], "true": []}})
    with pytest.raises(ValidationError):
        parse_task({"id": "s", "type": "core.Switch", "value": "x", "cases": {}})


def test_switch_child_lists_name_every_list() -> None:
    task = parse_task({
        "id": "s", "type": "core.Switch", "value": "x",
        "cases": {"a": [log("a1")], "b.c": [log("b1")]},
        "defaults": [log("d")], "errors": [log("e")],
    })
    paths = [(path, [t.id for t in tasks]) for path, tasks in task.child_lists()]
    assert paths == [
        ("cases.a", ["a1"]), ('cases["b.c"]', ["b1"]), ("defaults", ["d"]), ("errors", ["e"]),
    ]


# --- core.If ---------------------------------------------------------------------------


def if_task(condition: str) -> Any:
    return parse_task({
        "id": "check", "type": "core.If", "condition": condition,
        "then": [log("t")], "else": [log("e")],
    })


@pytest.mark.parametrize(
    ("amount", "branch", "expected"), [(20000, "t", True), (5, "e", False)]
)
def test_if_picks_branch(amount: int, branch: str, expected: bool) -> None:
    ctx = FakeContext({"trigger": {"value": {"amount": amount}}})
    out = if_task("{{ trigger.value.amount > 10000 }}").run(ctx)
    assert out == {"condition": expected}
    assert ctx.ran == [branch]


@pytest.mark.parametrize(("text", "branch"), [("False", "e"), ("0", "e"), ("on", "t")])
def test_if_string_conditions(text: str, branch: str) -> None:
    ctx = FakeContext()
    if_task(text).run(ctx)
    assert ctx.ran == [branch]


def test_if_else_alias_and_name_and_missing_else() -> None:
    by_alias = if_task("true")
    assert [t.id for t in by_alias.else_] == ["e"]
    by_name = core.If(id="i", type="core.If", condition="1", then=[core.Log(
        id="l", type="core.Log", message="m")], else_=[core.Fail(id="f", type="core.Fail")])
    assert [t.id for t in by_name.else_] == ["f"]
    only_then = parse_task({"id": "i", "type": "core.If", "condition": "no",
                            "then": [log("t")]})
    ctx = FakeContext()
    assert only_then.run(ctx) == {"condition": True}
    assert dict(only_then.child_lists()).keys() == {"then"}
    assert "else" in by_alias.model_dump(by_alias=True)


def test_if_requires_then() -> None:
    with pytest.raises(ValidationError):
        parse_task({"id": "i", "type": "core.If", "condition": "1", "then": []})


# --- core.Sequential / core.Parallel ---------------------------------------------------


def test_sequential_runs_children_in_order() -> None:
    task = parse_task({"id": "seq", "type": "core.Sequential",
                       "tasks": [log("a"), log("b"), log("c")]})
    ctx = FakeContext()
    assert task.run(ctx) is None
    assert ctx.ran == ["a", "b", "c"]
    assert [p for p, _ in task.child_lists()] == ["tasks"]


def test_parallel_passes_concurrency_and_runs_all() -> None:
    task = parse_task({"id": "par", "type": "core.Parallel", "concurrency": 2,
                       "tasks": [log("a"), log("b"), log("c")]})
    ctx = FakeContext()
    task.run(ctx)
    assert ctx.parallel == [(["a", "b", "c"], 2)]
    assert sorted(ctx.ran) == ["a", "b", "c"]
    assert parse_task({"id": "p", "type": "core.Parallel", "tasks": [log("a")]}).concurrency == 0


def test_parallel_rejects_negative_concurrency_and_empty_tasks() -> None:
    with pytest.raises(ValidationError):
        parse_task({"id": "p", "type": "core.Parallel", "tasks": [log("a")], "concurrency": -1})
    with pytest.raises(ValidationError):
        parse_task({"id": "p", "type": "core.Sequential", "tasks": []})


# --- core.Fail -------------------------------------------------------------------------


def test_fail_without_condition_raises_rendered_message() -> None:
    task = parse_task({"id": "f", "type": "core.Fail", "errorMessage": "bad {{ n }}"})
    with pytest.raises(TaskFailure, match=r"^bad 3$"):
        task.run(FakeContext({"n": 3}))
    with pytest.raises(TaskFailure, match=r"^Task failure$"):
        parse_task({"id": "f", "type": "core.Fail"}).run(FakeContext())


def test_fail_with_condition() -> None:
    task = parse_task({"id": "f", "type": "core.Fail", "condition": "{{ n > 2 }}"})
    assert task.run(FakeContext({"n": 1})) is None
    with pytest.raises(TaskFailure):
        task.run(FakeContext({"n": 5}))


# --- core.Set --------------------------------------------------------------------------


def test_set_outputs_rendered_native_values() -> None:
    task = parse_task({"id": "s", "type": "core.Set", "values": {
        "n": "{{ v.amount * 2 }}", "doc": "{{ v }}", "text": "id-{{ v.id }}", "plain": 5,
    }})
    out = task.run(FakeContext({"v": {"amount": 21, "id": "x"}}))
    assert out == {"n": 42, "doc": {"amount": 21, "id": "x"}, "text": "id-x", "plain": 5}


# --- core.Python -----------------------------------------------------------------------

HERE = __name__


def python(function: str, **args: Any) -> Any:
    return parse_task({"id": "py", "type": "core.Python", "function": function, "args": args})


def test_python_calls_function_with_context_and_rendered_args() -> None:
    CALLS.clear()
    ctx = FakeContext({"trigger": {"value": "rec"}, "k": 4})
    out = python(f"{HERE}:record_call", a="{{ k + 1 }}", b="plain").run(ctx)
    assert out == {"args": {"a": 5, "b": "plain"}, "seen": "rec"}
    assert CALLS[0][0] is ctx.vars


@pytest.mark.parametrize(
    ("function", "expected"),
    [(f"{HERE}:give_int", {"result": 6}), (f"{HERE}:give_none", None)],
)
def test_python_non_dict_results(function: str, expected: Any) -> None:
    args = {"n": 3} if function.endswith("give_int") else {}
    assert python(function, **args).run(FakeContext()) == expected


@pytest.mark.parametrize("function", ["os.path", "os:", ":f", "a b:c", "mod:f()", "1mod:f"])
def test_python_function_pattern_rejected_at_load(function: str) -> None:
    with pytest.raises(ValidationError):
        python(function)


@pytest.mark.parametrize(
    ("function", "fragment"),
    [
        ("no_such_module_xyz:f", "ModuleNotFoundError"),
        (f"{HERE}:missing_function", "AttributeError"),
        (f"{HERE}:NOT_CALLABLE", "not callable"),
    ],
)
def test_python_load_errors_name_the_function(function: str, fragment: str) -> None:
    with pytest.raises(TaskFailure) as info:
        python(function).run(FakeContext())
    assert function in str(info.value)
    assert fragment in str(info.value)
    assert str(info.value).startswith("core.Python py: ")


def test_python_errors_inside_the_function_propagate_unchanged() -> None:
    with pytest.raises(AttributeError, match="raised inside the function"):
        python(f"{HERE}:explode").run(FakeContext())


def test_python_imports_once(monkeypatch: pytest.MonkeyPatch) -> None:
    imports: list[str] = []
    real = core.importlib.import_module

    def counting(name: str) -> Any:
        imports.append(name)
        return real(name)

    core._FUNCTIONS.pop("json:dumps", None)
    task = python("json:dumps", sort_keys=True)  # (may import task modules: not counted)
    monkeypatch.setattr(core.importlib, "import_module", counting)
    for _ in range(3):
        assert task.run(FakeContext({"b": 1})) == {"result": '{"b": 1, "outputs": {}}'}
    assert imports == ["json"]


# --- model details ---------------------------------------------------------------------


def test_nested_lists_are_typed_by_discriminator() -> None:
    task = parse_task({
        "id": "outer", "type": "core.If", "condition": "1",
        "then": [{"id": "sw", "type": "core.Switch", "value": "a",
                  "cases": {"a": [{"id": "set", "type": "core.Set", "values": {"x": 1}}]}}],
        "errors": [log("err")],
    })
    inner = task.then[0]
    assert isinstance(inner, core.Switch)
    assert isinstance(inner.cases["a"][0], core.Set)
    assert isinstance(task.errors[0], core.Log)
    with pytest.raises(ValidationError):
        parse_task({"id": "o", "type": "core.If", "condition": "1",
                    "then": [{"id": "x", "type": "core.Nope"}]})


def test_tasks_are_frozen() -> None:
    task = parse_task(log("l"))
    with pytest.raises(ValidationError):
        task.message = "changed"
