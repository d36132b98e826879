"""The flow file: load and validate it (``parse_flow``); the task union; the JSON Schema.

The models themselves (flow-level properties, triggers) are :mod:`waxflow.flow`.

``parse_flow(path)`` either returns a fully validated :class:`Flow` or raises
:class:`~waxflow.errors.FlowError` naming ``file:line:column``, the field and what was
expected for every problem found (schema, duplicate task ids, template syntax, unknown
expression variables, retry policies). A flow that does not validate never starts.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import threading
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from waxflow.dataflows.task_modules import modules_for, type_names
from waxflow.dataflows.yamlpos import PositionMap, load_yaml
from waxflow.errors import FlowError, Problem, format_path
from waxflow.expressions import Expressions, check_static
from waxflow.flow import STATIC_PROPERTIES, TASK_ROOTS, TRIGGER_ALIASES, TRIGGER_TYPES, FlowBase
from waxflow.tasks import (
    TASK_ALIASES,
    TASK_TYPES,
    TaskBase,
    add_task_aliases,
    canonical_task_type,
    known_task_type,
)

#: fields rendered once when the job starts (Kafka client and registry settings), never per
#: record
STATIC_FIELDS = STATIC_PROPERTIES

#: the modules that define task types (each registers its types when imported)
TASK_MODULES = (
    "waxflow.core_tasks",
    "waxflow.connectors.bigquery",
    "waxflow.connectors.dbt",
    "waxflow.connectors.duckdb",
    "waxflow.connectors.email",
    "waxflow.connectors.http",
    "waxflow.connectors.js_tasks",
    "waxflow.connectors.jsonata_tasks",
    "waxflow.connectors.kafka_consume",
    "waxflow.connectors.kafka_produce",
    "waxflow.connectors.mongodb",
    "waxflow.connectors.notify",
    "waxflow.connectors.postgres",
    "waxflow.connectors.s3",
    "waxflow.connectors.serdes_tasks",
    "waxflow.connectors.snowflake",
    "waxflow.connectors.sql",
    "waxflow.connectors.storage_tasks",
    "waxflow.subflow",
)

#: Kestra plugins waxflow has no equivalent of, and what to use instead (one line each)
KESTRA_INSTEAD: dict[str, str] = {
    "io.kestra.plugin.mongodb.": "waxflow's MongoDB tasks are mongodb.InsertOne, Find, "
                                 "Update, Delete, Bulk, Load and Aggregate: poll a "
                                 "collection with a Schedule trigger (schedule.Interval) and "
                                 "mongodb.Find",
    "io.kestra.plugin.graalvm.": "waxflow runs JavaScript only, in js.FileTransform (V8): "
                                 "transform with it, jsonata.TransformItems, core.Set or "
                                 "core.Python",
}

#: Kestra's names for task types whose modules do not declare them (``task_type(...,
#: aliases=...)`` is the usual place); only where ours take the same properties
KESTRA_ALIASES: dict[str, tuple[str, ...]] = {
    "http.Request": ("io.kestra.plugin.core.http.Request",),
    "notify.Slack": ("io.kestra.plugin.slack.notifications.SlackIncomingWebhook",
                     "io.kestra.plugin.notifications.slack.SlackIncomingWebhook"),
    "bigquery.Load": ("io.kestra.plugin.gcp.bigquery.Load",),
    "bigquery.Query": ("io.kestra.plugin.gcp.bigquery.Query",),
    "s3.Upload": ("io.kestra.plugin.aws.s3.Upload",),
}


#: the task types this process's unions hold: those of the flows parsed so far (building a
#: task model costs about 7 ms, and a realtime flow uses a few of the dozens registered).
#: It only grows, so every rebuild is on a superset of the types of every flow parsed
#: before: their tasks still validate (see :func:`_union_of`)
_IN_USE: dict[str, None] = {}
#: held while the union grows (a child flow may be parsed on an executor thread)
_BUILDING = threading.RLock()


def task_union(modules: Sequence[str] | None = None, *,
               types: Iterable[str] | None = None) -> Any:
    """The discriminated union of task types (resolves ``AnyTask``), once ``modules``
    (default: every task module, :data:`TASK_MODULES`) are imported; a flow passes only those
    its tasks need (:func:`~waxflow.dataflows.task_modules.modules_for`).

    ``types``: the type names (or aliases) the caller needs, e.g. those a flow file names;
    the union holds them and those of every earlier call. ``None``: every registered type
    (the JSON Schema, the checks of a task of unknown type)."""
    with _BUILDING:
        return _union_of(_in_use(modules, types))


def _in_use(modules: Sequence[str] | None, types: Iterable[str] | None) -> tuple[str, ...]:
    """Import ``modules`` (registering their task types) and add ``types`` (None: every
    registered one) to :data:`_IN_USE`; the registered names in it, in registration order."""
    for module in TASK_MODULES if modules is None else modules:
        importlib.import_module(module)  # importing a module registers its task types
    for name, aliases in KESTRA_ALIASES.items():
        if name in TASK_TYPES and any(a not in TASK_ALIASES for a in aliases):
            add_task_aliases(name, *aliases)
    wanted = TASK_TYPES if types is None else [
        canonical_task_type(t) for t in types if known_task_type(t)]
    _IN_USE.update(dict.fromkeys(wanted))
    if not _IN_USE:  # no known task type (an invalid flow: no tasks, or unknown types)
        _IN_USE.update(dict.fromkeys(TASK_TYPES))
    elif len(_IN_USE) == 1:
        # pydantic drops the discriminator of a one-member union nested in its member (a
        # task's ``errors``), so an unknown nested type would read as a wrong Literal: a
        # second member (the first other registered type) keeps the union discriminated
        other = next((n for n in TASK_TYPES if n not in _IN_USE), None)
        if other is not None:
            _IN_USE[other] = None
    return tuple(n for n in TASK_TYPES if n in _IN_USE)


@functools.cache
def _union_of(names: tuple[str, ...]) -> Any:
    """The union of ``names``, with every task model rebuilt on it.

    A process can build a second, larger union (a subflow needing another module, a test
    parsing many flows): pydantic keeps a model's evaluated field annotations and embeds the
    schemas of the models it references, so a plain ``model_rebuild`` would keep the old
    union at any depth. Hence, first, the fields typed with ``AnyTask`` get their source
    annotation back and every model drops its schema (pydantic 2.14 internals, pinned)."""
    classes: tuple[type[TaskBase], ...] = tuple(TASK_TYPES[n] for n in names)
    union: Any = Annotated[Union[classes], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
    models: list[type[TaskBase]] = [TaskBase, *classes]
    for cls in models:
        for name, field in cls.__pydantic_fields__.items():
            raw = _source_annotation(cls, name)
            if isinstance(raw, str) and "AnyTask" in raw:
                field._original_annotation = raw
                field._complete = False
        cls.__pydantic_complete__ = False
        for attr in ("__pydantic_core_schema__", "__pydantic_validator__",
                     "__pydantic_serializer__"):
            if attr in cls.__dict__:
                delattr(cls, attr)
    for cls in models:
        cls.model_rebuild(_types_namespace={"AnyTask": union}, force=True)
    return union


def _source_annotation(cls: type, name: str) -> Any:
    """The annotation of field ``name`` as written (a string: modules use postponed
    annotations)."""
    for klass in cls.__mro__:
        raw = inspect.get_annotations(klass).get(name)
        if raw is not None:
            return raw
    return None


def flow_model(modules: Sequence[str] | None = None, *,
               types: Iterable[str] | None = None) -> type[FlowBase]:
    """The Flow model with its task lists typed as lists of the task union (of ``types``
    once ``modules`` are imported, see :func:`task_union`; default: every type)."""
    with _BUILDING:
        return _flow_model_of(_in_use(modules, types))


@functools.cache
def _flow_model_of(names: tuple[str, ...]) -> type[FlowBase]:
    union = _union_of(names)
    base = FlowBase.model_fields

    class Flow(FlowBase):
        tasks: list[union] = Field(min_length=1,  # type: ignore[valid-type]
                                   description=base["tasks"].description)
        errors: list[union] = Field(default_factory=list,  # type: ignore[valid-type]
                                    description=base["errors"].description)
        finally_: list[union] = Field(  # type: ignore[valid-type]
            default_factory=list, alias="finally", description=base["finally_"].description)
        afterExecution: list[union] = Field(  # type: ignore[valid-type]
            default_factory=list, description=base["afterExecution"].description)

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
        if (isinstance(part, str) and (known_task_type(part) or part in TRIGGER_TYPES
                                       or part in TRIGGER_ALIASES)
                and out and isinstance(out[-1], int)):
            continue
        if isinstance(part, str) and part.startswith("function-"):
            continue
        out.append(part)
    return tuple(out)


def _pydantic_problems(exc: ValidationError, pos: PositionMap, data: Any = None,
                       prefix: tuple[Hashable, ...] = ()) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = (*prefix, *_clean_loc(err["loc"]))
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = f"unknown property '{loc[-1]}'" + _key_hint(data, loc)
            problems.append(pos.problem(loc, msg, at_key=True))
            continue
        if kind == "union_tag_invalid":
            tag = err.get("ctx", {}).get("tag")
            is_task = loc[:1] != ("triggers",)
            problems.append(pos.problem((*loc, "type"), unknown_type_message(tag, is_task)))
            if is_task:  # the task's other problems, as far as they can be known
                problems.extend(_unknown_task_problems(data, loc, pos))
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


def unknown_type_message(tag: Any, is_task: bool = True) -> str:
    """``unknown type 'X'`` with the closest known spelling, or where to look."""
    kind = "task" if is_task else "trigger"
    names = [*TASK_TYPES, *TASK_ALIASES] if is_task else [*TRIGGER_TYPES, *TRIGGER_ALIASES]
    text = str(tag)
    by_lower = {n.lower(): n for n in names}
    close = by_lower.get(text.lower())  # Kestra's docs spell type names in lower case too
    if close is None and text.startswith("io.kestra."):
        # the same class under another package (Kestra moved them), else a plain typo:
        # sharing the io.kestra.plugin prefix alone makes no match
        last = text.rsplit(".", 1)[-1].lower()
        same = [n for n in names if n.startswith("io.kestra.")
                and n.rsplit(".", 1)[-1].lower() == last]
        found = same or difflib.get_close_matches(text, names, n=1, cutoff=0.92)
        close = found[0] if found else None
    elif close is None:
        found = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
        close = found[0] if found else None
    if close is not None:
        return f"unknown type '{tag}'; did you mean '{close}'?"
    for prefix, instead in KESTRA_INSTEAD.items():
        if text.startswith(prefix):
            return f"unknown type '{tag}': {instead}"
    if text.startswith("io.kestra."):
        return (f"unknown type '{tag}': waxflow has no equivalent of this Kestra {kind} "
                f"(the {kind} types are listed in docs/reference.md and by `waxflow schema`)")
    return (f"unknown type '{tag}' (the {kind} types are listed in docs/reference.md and by "
            "`waxflow schema`)")


def _at(data: Any, loc: Sequence[Any]) -> Any:
    """The raw value at ``loc`` in the loaded document (None when there is none)."""
    for part in loc:
        if (isinstance(data, dict) and part in data) or (
                isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)):
            data = data[part]
        else:
            return None
    return data


def _key_hint(data: Any, loc: Sequence[Hashable]) -> str:
    """``; did you mean 'X'?`` for an unknown key of a task, a trigger or the flow."""
    owner = _at(data, loc[:-1])
    if not isinstance(owner, dict):
        return ""
    model: Any = None
    type_name = str(owner.get("type"))
    if len(loc) == 1:
        model = FlowBase  # the flow's properties (flow_model() only types its task lists)
    elif known_task_type(type_name):
        model = TASK_TYPES[TASK_ALIASES.get(type_name, type_name)]
    else:
        model = TRIGGER_TYPES.get(TRIGGER_ALIASES.get(type_name, type_name))
    if model is None:
        return ""
    names = [f.alias or n for n, f in model.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.85)
    return f"; did you mean '{close[0]}'?" if close else ""


@functools.cache
def _lenient_task() -> Any:
    """Validates what every task has (id, retry, timeout, errors...) of a task whose type is
    unknown, ignoring its other properties."""
    union = task_union()

    class AnyTypeTask(TaskBase):
        model_config = ConfigDict(extra="ignore", frozen=True)

    AnyTypeTask.model_rebuild(_types_namespace={"AnyTask": union}, force=True)
    return TypeAdapter(AnyTypeTask)


@functools.cache
def _task_list() -> Any:
    items: Any = task_union()
    return TypeAdapter(list[items])


def _unknown_task_problems(data: Any, loc: tuple[Hashable, ...],
                           pos: PositionMap) -> list[Problem]:
    """Problems of a task of unknown type: its common properties, and the tasks nested in
    lists of it (a Kestra flowable's ``tasks``, ``then``...)."""
    item = _at(data, loc)
    if not isinstance(item, dict):
        return []
    problems: list[Problem] = []
    try:
        _lenient_task().validate_python({**item, "type": "?"})
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, pos, data, loc))
    for key, value in item.items():
        if key in TaskBase.model_fields or not isinstance(value, list):
            continue
        if value and all(isinstance(v, dict) and "type" in v for v in value):
            try:
                _task_list().validate_python(value)
            except ValidationError as exc:
                problems.extend(_pydantic_problems(exc, pos, data, (*loc, key)))
    return problems


def _template_problems(data: Any, pos: PositionMap, exprs: Expressions) -> list[Problem]:
    problems: list[Problem] = []

    def is_template(value: Any) -> bool:
        return isinstance(value, str) and ("{{" in value or "{%" in value)

    def walk(value: Any, path: tuple[Hashable, ...]) -> None:
        if isinstance(value, dict):
            is_task = known_task_type(value.get("type"))
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

    for root in ("triggers", *TASK_ROOTS, "outputs"):
        if isinstance(data, dict) and root in data:
            walk(data[root], (root,))
    return problems


def _raw_tasks(data: dict[str, Any]) -> list[tuple[tuple[Hashable, ...], dict[str, Any]]]:
    """Every task of the loaded document (a mapping with an ``id`` and a ``type`` in a task
    list, nested ones included, known type or not) with its path."""
    out: list[tuple[tuple[Hashable, ...], dict[str, Any]]] = []

    def walk(value: Any, path: tuple[Hashable, ...], in_list: bool) -> None:
        if isinstance(value, dict):
            if in_list and isinstance(value.get("id"), str) and "type" in value:
                out.append((path, value))
            for k, v in value.items():
                walk(v, (*path, k), False)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*path, i), True)

    for root in TASK_ROOTS:
        if isinstance(data.get(root), list):
            walk(data[root], (root,), False)
    return out


def _semantic_problems(data: dict[str, Any], pos: PositionMap) -> list[Problem]:
    """Checks across the file, on the loaded document (so they are reported along with
    schema problems elsewhere): duplicate task ids, retry policies, the number of
    triggers."""
    from waxflow.retry import check_retry
    from waxflow.tasks import RetrySpec

    problems: list[Problem] = []
    seen: dict[str, tuple[Hashable, ...]] = {}
    retries: list[tuple[tuple[Hashable, ...], Any]] = [(("retry",), data.get("retry"))]
    for path, task in _raw_tasks(data):
        task_id = task["id"]
        if task_id in seen:
            first = format_path(seen[task_id])
            problems.append(pos.problem((*path, "id"),
                                        f"duplicate task id '{task_id}' (first used at {first})"))
        else:
            seen[task_id] = path
        retries.append(((*path, "retry"), task.get("retry")))
    for path, raw in retries:
        if isinstance(raw, dict):
            try:
                spec = RetrySpec.model_validate(raw)
            except ValidationError:
                continue  # reported by the schema validation
            problems.extend(pos.problem(path, m) for m in check_retry(spec))
    triggers = data.get("triggers")
    if isinstance(triggers, list):
        enabled = [i for i, t in enumerate(triggers)
                   if not (isinstance(t, dict) and t.get("disabled") is True)]
        if len(enabled) > 1:
            problems.append(pos.problem(
                ("triggers", enabled[1]),
                f"waxflow runs one trigger per flow and this flow has {len(enabled)}: split "
                "it into one flow per trigger (same tasks), or disable all but one "
                "(`disabled: true`)"))
    return problems


def parse_flow_text(text: str, file: str) -> FlowBase:
    """Validate a flow given as YAML text; ``file`` names it in error messages."""
    data, pos = load_yaml(text, file)
    if not isinstance(data, dict):
        raise FlowError([Problem(file, 1, 1, "", "a flow file must be a YAML mapping with "
                                                 "id, namespace, triggers and tasks")])
    problems: list[Problem] = []
    try:
        flow = flow_model(modules_for(data), types=type_names(data)).model_validate(data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, pos, data))
        flow = None
    problems.extend(_template_problems(data, pos, Expressions()))
    problems.extend(_semantic_problems(data, pos))
    if problems:
        unique = {(p.line, p.column, p.field, p.message): p for p in problems}
        raise FlowError(sorted(unique.values(), key=lambda p: (p.line or 0, p.column or 0)))
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
