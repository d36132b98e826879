"""The flow file: load and validate it (``parse_flow``); the task union; the JSON Schema.

The models themselves (flow-level properties, triggers) are :mod:`waxflow.flow`.

``parse_flow(path)`` either returns a fully validated :class:`Flow` or raises
:class:`~waxflow.errors.FlowError` naming ``file:line:column``, the field and what was
expected for every problem found (schema, duplicate task ids, template syntax, unknown
expression variables, retry policies). A flow that does not validate never starts.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, ValidationError

from waxflow.dataflows.yamlpos import PositionMap, load_yaml
from waxflow.errors import FlowError, Problem, format_path
from waxflow.expressions import Expressions, check_static
from waxflow.flow import TRIGGER_TYPES, FlowBase
from waxflow.tasks import TASK_TYPES, TaskBase

#: fields rendered once when the job starts (Kafka client settings), never per record
STATIC_FIELDS = frozenset({"properties"})

#: the modules that define task types (each registers its types when imported)
TASK_MODULES = (
    "waxflow.core_tasks",
    "waxflow.connectors.bigquery",
    "waxflow.connectors.dbt",
    "waxflow.connectors.duckdb",
    "waxflow.connectors.http",
    "waxflow.connectors.kafka_consume",
    "waxflow.connectors.kafka_produce",
    "waxflow.connectors.notify",
    "waxflow.connectors.s3",
    "waxflow.connectors.snowflake",
)


@functools.cache
def task_union() -> Any:
    """The discriminated union of every registered task type (resolves ``AnyTask``)."""
    for module in TASK_MODULES:  # importing a module registers its task types
        importlib.import_module(module)
    classes: tuple[type[TaskBase], ...] = tuple(TASK_TYPES.values())
    union: Any = Annotated[Union[classes], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
    models: list[type[TaskBase]] = [TaskBase, *classes]
    for cls in models:
        cls.model_rebuild(_types_namespace={"AnyTask": union}, force=True)
    return union


@functools.cache
def flow_model() -> type[FlowBase]:
    """The Flow model with ``tasks``/``errors`` typed as lists of the task union."""
    union = task_union()

    class Flow(FlowBase):
        tasks: list[union] = Field(min_length=1)  # type: ignore[valid-type]
        errors: list[union] = Field(default_factory=list)  # type: ignore[valid-type]

    Flow.__doc__ = "A waxflow flow file."
    return Flow



def json_schema() -> dict[str, Any]:
    """The JSON Schema of the flow file, for editors."""
    schema: dict[str, Any] = flow_model().model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "waxflow flow"
    return schema


def _clean_loc(loc: Sequence[Hashable]) -> tuple[Hashable, ...]:
    """Drop the discriminator tags pydantic inserts into error locations."""
    out: list[Hashable] = []
    for part in loc:
        if (isinstance(part, str) and (part in TASK_TYPES or part in TRIGGER_TYPES)
                and out and isinstance(out[-1], int)):
            continue
        if isinstance(part, str) and part.startswith("function-"):
            continue
        out.append(part)
    return tuple(out)


def _pydantic_problems(exc: ValidationError, pos: PositionMap) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = _clean_loc(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = f"unknown property '{loc[-1]}'"
            problems.append(pos.problem(loc, msg, at_key=True))
            continue
        if kind == "union_tag_invalid":
            tag = err.get("ctx", {}).get("tag")
            known = ", ".join(sorted(TASK_TYPES if "tasks" in loc or "errors" in loc
                                     else TRIGGER_TYPES))
            msg = f"unknown type '{tag}'; expected one of: {known}"
            problems.append(pos.problem((*loc, "type"), msg))
            continue
        if kind == "union_tag_not_found":
            problems.append(pos.problem(loc, "missing property 'type'"))
            continue
        if kind == "missing":
            problems.append(pos.problem(loc, f"missing required property '{loc[-1]}'"))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and kind not in ("model_type", "dict_type") and "got " not in msg:
            shown = repr(err["input"])
            if len(shown) < 60:
                msg += f" (got {shown})"
        problems.append(pos.problem(loc, msg))
    return problems


def _template_problems(data: Any, pos: PositionMap, exprs: Expressions) -> list[Problem]:
    problems: list[Problem] = []

    def is_template(value: Any) -> bool:
        return isinstance(value, str) and ("{{" in value or "{%" in value)

    def walk(value: Any, path: tuple[Hashable, ...]) -> None:
        if isinstance(value, dict):
            is_task = isinstance(value.get("type"), str) and value["type"] in TASK_TYPES
            for k, v in value.items():
                if is_task and k in ("id", "type") and is_template(v):
                    problems.append(pos.problem((*path, k), "templates are not allowed here"))
                    continue
                walk(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*path, i))
        elif is_template(value):
            static = any(part in STATIC_FIELDS for part in path)
            if path[0] == "triggers" and not static:
                return  # only a trigger's client properties are rendered
            for msg in (check_static(exprs, value) if static else exprs.check(value)):
                problems.append(pos.problem(path, msg))

    for root in ("triggers", "tasks", "errors"):
        if isinstance(data, dict) and root in data:
            walk(data[root], (root,))
    return problems


def _semantic_problems(flow: FlowBase, pos: PositionMap) -> list[Problem]:
    from waxflow.retry import check_retry

    problems: list[Problem] = []
    seen: dict[str, tuple[Hashable, ...]] = {}
    for path, task in flow.all_tasks():
        if task.id in seen:
            first = format_path(seen[task.id])
            problems.append(pos.problem((*path, "id"),
                                        f"duplicate task id '{task.id}' (first used at {first})"))
        else:
            seen[task.id] = path
        if task.retry is not None:
            problems.extend(pos.problem((*path, "retry"), m) for m in check_retry(task.retry))
    if flow.retry is not None:
        problems.extend(pos.problem(("retry",), m) for m in check_retry(flow.retry))
    return problems


def parse_flow_text(text: str, file: str) -> FlowBase:
    """Validate a flow given as YAML text; ``file`` names it in error messages."""
    data, pos = load_yaml(text, file)
    if not isinstance(data, dict):
        raise FlowError([Problem(file, 1, 1, "", "a flow file must be a YAML mapping with "
                                                 "id, namespace, triggers and tasks")])
    problems: list[Problem] = []
    try:
        flow = flow_model().model_validate(data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, pos))
        flow = None
    problems.extend(_template_problems(data, pos, Expressions()))
    if flow is not None:
        problems.extend(_semantic_problems(flow, pos))
    if problems:
        problems.sort(key=lambda p: (p.line or 0, p.column or 0))
        raise FlowError(problems)
    assert flow is not None
    return flow


def parse_flow(path: str | Path) -> FlowBase:
    """Read and validate a flow file; raises FlowError (file:line:col, field, expectation)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FlowError([Problem(str(path), None, None, "", "no such flow file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowError([Problem(str(path), None, None, "", f"cannot read: {exc}")]) from None
    return parse_flow_text(text, str(path))
