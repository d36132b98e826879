"""Tests for waxflow.dataflows.yamlpos."""

from __future__ import annotations

import math

import pytest

from waxflow.dataflows.yamlpos import load_yaml
from waxflow.errors import FlowError

FLOW = """\
id: orders
namespace: shop
tasks:
  - id: first
    type: core.Log
  - id: alert
    type: core.If
    retry:
      interval: soon
      maxAttempts: 5
properties: {bootstrap.servers: "127.0.0.1:9092"}
"""


def test_values_are_plain_python() -> None:
    value, _ = load_yaml(FLOW, "f.yaml")
    assert value == {
        "id": "orders",
        "namespace": "shop",
        "tasks": [
            {"id": "first", "type": "core.Log"},
            {"id": "alert", "type": "core.If", "retry": {"interval": "soon", "maxAttempts": 5}},
        ],
        "properties": {"bootstrap.servers": "127.0.0.1:9092"},
    }


def test_value_positions_are_one_based() -> None:
    _, pos = load_yaml(FLOW, "f.yaml")
    assert pos.locate(()) == (1, 1)
    assert pos.locate(("id",)) == (1, 5)
    assert pos.locate(("tasks", 1)) == (6, 5)
    assert pos.locate(("tasks", 1, "retry", "interval")) == (9, 17)
    assert pos.locate(["properties", "bootstrap.servers"]) == (11, 33)


def test_key_positions() -> None:
    _, pos = load_yaml(FLOW, "f.yaml")
    assert pos.locate_key(("tasks", 1, "retry", "interval")) == (9, 7)
    assert pos.locate_key(("tasks", 1, "retry")) == (8, 5)
    # no key for a list item: falls back to the value position
    assert pos.locate_key(("tasks", 1)) == (6, 5)


def test_missing_path_points_to_longest_existing_prefix() -> None:
    _, pos = load_yaml(FLOW, "f.yaml")
    assert pos.locate(("tasks", 1, "retry", "maxInterval")) == (9, 7)  # the retry mapping
    assert pos.locate(("tasks", 7, "id")) == (4, 3)  # the tasks list
    assert pos.locate(("nope", "deeper")) == (1, 1)


def test_problem_helper() -> None:
    _, pos = load_yaml(FLOW, "flows/x.yaml")
    p = pos.problem(("tasks", 1, "retry", "interval"), "bad")
    assert str(p) == "flows/x.yaml:9:17: tasks[1].retry.interval: bad"
    assert str(pos.problem(("tasks", 1, "retry"), "unknown", at_key=True)).startswith(
        "flows/x.yaml:8:5: tasks[1].retry:"
    )


def test_yaml_1_2_scalars() -> None:
    text = "a: yes\nb: on\nc: 12:30\nd: 2024-01-01\ne: ~\nf: 0x1F\ng: 1.5e3\nh: true\n"
    text += "i: .inf\nj: '5'\nk: !!str 5\nl: !!float 2\nm: -7\nn:\n"
    value, _ = load_yaml(text, "f.yaml")
    assert value == {
        "a": "yes",
        "b": "on",
        "c": "12:30",
        "d": "2024-01-01",
        "e": None,
        "f": 31,
        "g": 1500.0,
        "h": True,
        "i": math.inf,
        "j": "5",
        "k": "5",
        "l": 2.0,
        "m": -7,
        "n": None,
    }


def test_anchors_and_aliases_expand() -> None:
    value, pos = load_yaml("a: &x {k: 1}\nb: *x\n", "f.yaml")
    assert value == {"a": {"k": 1}, "b": {"k": 1}}
    assert value["a"] is not value["b"]
    assert pos.locate(("b", "k")) == (1, 11)  # where the aliased value was written


def test_empty_document() -> None:
    value, pos = load_yaml("# nothing\n", "f.yaml")
    assert value is None
    assert pos.locate(("x",)) is None


def _problems(text: str) -> list[str]:
    with pytest.raises(FlowError) as info:
        load_yaml(text, "f.yaml")
    return [str(p) for p in info.value.problems]


def test_duplicate_key_names_both_lines() -> None:
    assert _problems("id: a\nx: 1\nid: b\n") == [
        "f.yaml:3:1: id: duplicate key 'id' (first defined on line 1)"
    ]


def test_all_problems_reported_together() -> None:
    problems = _problems("a: 1\na: 2\nb: !!binary aGk=\n")
    assert len(problems) == 2
    assert "duplicate key" in problems[0]
    assert problems[1] == "f.yaml:3:4: b: unsupported YAML tag '!!binary'"


def test_syntax_error_has_position_and_parser_text() -> None:
    problems = _problems("id: x\ntasks: [1,\n")
    assert len(problems) == 1
    assert problems[0] == (
        "f.yaml:3:1: expected the node content, but found '<stream end>' "
        "(while parsing a flow node)"
    )


def test_mapping_values_not_allowed() -> None:
    assert _problems("a: b: c\n") == ["f.yaml:1:5: mapping values are not allowed here"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: !Ref x\n", "f.yaml:1:4: a: unsupported YAML tag '!Ref'"),
        ("a: !!timestamp 2024-01-01\n", "f.yaml:1:4: a: unsupported YAML tag '!!timestamp'"),
        ("a: !!set {x}\n", "f.yaml:1:4: a: unsupported YAML tag '!!set'"),
        ("a: !!int x\n", "f.yaml:1:4: a: 'x' is not a valid !!int value"),
        ("a: &r [*r]\n", "f.yaml:1:4: a[0]: recursive YAML alias"),
        ("b: {x: 1}\n<<: {y: 2}\n", "f.yaml:2:1: YAML merge keys (<<) are not supported"),
        ("? [a]\n: 1\n", "f.yaml:1:3: mapping keys must be plain values, not lists or maps"),
        ("~: 1\n", "f.yaml:1:1: mapping keys must not be null"),
        ("a: 1\n---\nb: 2\n", "f.yaml:2:1: but found another document"),
        ("a: \x07\n", "f.yaml:1:4: unacceptable character #x0007"),
    ],
)
def test_refused(text: str, expected: str) -> None:
    problems = _problems(text)
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_alias_bomb_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    assert "document expands to more than" in _problems("\n".join(lines) + "\n")[0]


def test_no_traceback_text_in_errors() -> None:
    for problem in _problems("a: [\n") + _problems("a: 1\na: 1\n"):
        assert "Traceback" not in problem
        assert "<unicode string>" not in problem
