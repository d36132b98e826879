"""Tests for waxflow.errors."""

from __future__ import annotations

import pytest

from waxflow.errors import FlowError, Problem, format_path


def test_problem_full_position() -> None:
    p = Problem(
        "flows/x.yaml",
        12,
        5,
        "tasks[1].retry.interval",
        "expected an ISO-8601 duration such as PT30S, got 'soon'",
    )
    assert str(p) == (
        "flows/x.yaml:12:5: tasks[1].retry.interval: "
        "expected an ISO-8601 duration such as PT30S, got 'soon'"
    )


def test_problem_omits_missing_parts() -> None:
    assert str(Problem("f.yaml", None, None, "id", "required")) == "f.yaml: id: required"
    assert str(Problem("f.yaml", 3, None, "id", "required")) == "f.yaml:3: id: required"
    assert str(Problem("f.yaml", 3, 1, "", "bad YAML")) == "f.yaml:3:1: bad YAML"


def test_problem_is_frozen() -> None:
    p = Problem("f", 1, 1, "x", "m")
    with pytest.raises(AttributeError):
        p.line = 2  # type: ignore[misc]


def test_flow_error_joins_problems_one_per_line() -> None:
    a = Problem("f.yaml", 1, 1, "id", "required")
    b = Problem("f.yaml", 4, 3, "tasks[0].type", "unknown task type 'x'")
    err = FlowError([a, b])
    assert err.problems == [a, b]
    assert str(err) == "f.yaml:1:1: id: required\nf.yaml:4:3: tasks[0].type: unknown task type 'x'"


def test_flow_error_accepts_single_problem_and_refuses_none() -> None:
    a = Problem("f.yaml", 1, 1, "id", "required")
    assert FlowError(a).problems == [a]
    with pytest.raises(ValueError):
        FlowError([])


def test_format_path() -> None:
    assert format_path(("tasks", 1, "retry", "interval")) == "tasks[1].retry.interval"
    assert format_path((0, "id")) == "[0].id"
    assert format_path(()) == ""
    assert format_path(("properties", "bootstrap.servers")) == 'properties["bootstrap.servers"]'
    assert format_path(("a", 'q"x')) == 'a["q\\"x"]'


def test_user_message_finds_our_error_in_the_chain_or_the_text() -> None:
    from waxflow.errors import FlowStopped, SerdeStop, WaxflowError, user_message

    try:
        try:
            raise SerdeStop("cannot deserialize the value of record t/0@3")
        except SerdeStop as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as outer:
        assert user_message(outer) == "cannot deserialize the value of record t/0@3"
    # Bytewax may keep only the text of the original error
    flat = RuntimeError("error calling mapper\nFlowStopped: execution x FAILED\nmore")
    assert user_message(flat) == "execution x FAILED"
    assert user_message(RuntimeError("a bug")) is None
    assert user_message(KeyError("k"), also=(KeyError,)) == "'k'"
    assert issubclass(FlowStopped, WaxflowError)
