"""The generated flow reference (docs/reference.md) and the descriptions it is made of."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from waxflow.dataflows.reference import EXAMPLES, main, nested_models, render_reference
from waxflow.dataflows.spec import parse_flow_text, task_union
from waxflow.flow import TRIGGER_TYPES, OnSerdeError
from waxflow.tasks import TASK_TYPES, RetrySpec, TaskBase

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "reference.md"
REGENERATE = "python -m waxflow.dataflows.reference > docs/reference.md"


def documented_models() -> dict[str, type[BaseModel]]:
    task_union()  # imports every task module
    return {"TaskBase": TaskBase, "RetrySpec": RetrySpec, "OnSerdeError": OnSerdeError,
            **TRIGGER_TYPES, **TASK_TYPES,
            **{cls.__name__: cls for cls in nested_models()}}


def test_committed_reference_is_current() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == render_reference(), (
        f"docs/reference.md is out of date: regenerate it with `{REGENERATE}`")


def test_every_field_has_a_description() -> None:
    missing = [f"{name}.{field.alias or key}"
               for name, model in documented_models().items()
               for key, field in model.model_fields.items()
               if not (field.description or "").strip()]
    assert missing == [], "fields without a description (Field(description=...)): " + \
        ", ".join(missing)


def test_every_type_has_a_docstring_and_an_example() -> None:
    task_union()
    types = {**TRIGGER_TYPES, **TASK_TYPES}
    assert [n for n, cls in types.items() if not (cls.__dict__.get("__doc__") or "").strip()] \
        == []
    assert set(EXAMPLES) == {*types, "TaskBase", "RetrySpec"}


def flow_with(example: str) -> str:
    """A whole flow file around an example fragment (``triggers:`` or ``tasks:``)."""
    head = "id: example\nnamespace: docs\n"
    if example.startswith("triggers:"):
        return head + example + "tasks:\n  - id: log\n    type: core.Log\n    message: hi\n"
    return head + "triggers:\n  - id: tick\n    type: schedule.Interval\n    interval: PT1M\n" \
        + example


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_are_valid_flow_fragments(name: str) -> None:
    flow = parse_flow_text(flow_with(EXAMPLES[name]), f"example {name}")
    if name in TRIGGER_TYPES:
        assert flow.trigger.type == name
    elif name in TASK_TYPES:
        assert flow.tasks[0].type == name


def test_check_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "reference.md"
    path.write_text(render_reference(), encoding="utf-8")
    assert main(["--check", "--path", str(path)]) == 0
    path.write_text("stale\n", encoding="utf-8")
    assert main(["--check", "--path", str(path)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["--check", "--path", str(tmp_path / "absent.md")]) == 1


def test_reference_covers_every_type_and_property() -> None:
    text = render_reference()
    for name in [*TRIGGER_TYPES, *TASK_TYPES]:
        assert f"### `{name}`" in text
    for field in ("mergeKeys", "failOnEmpty", "allowFailure", "maxAttempts", "followRedirects"):
        assert f"| `{field}` |" in text
