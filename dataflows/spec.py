"""The flow file: pydantic models for flows and triggers, and ``parse_flow``.

``parse_flow(path)`` either returns a fully validated :class:`Flow` or raises
:class:`~dataflows.errors.FlowError` naming ``file:line:column``, the field and what was
expected for every problem found (schema, duplicate task ids, template syntax, unknown
expression variables, retry policies). A flow that does not validate never starts.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Hashable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connectors.kafka_config import refuse_for_share
from dataflows.durations import Duration
from dataflows.errors import FlowError, Problem, format_path
from dataflows.expressions import Expressions
from dataflows.tasks import ID_PATTERN, TASK_TYPES, RetrySpec, TaskBase
from dataflows.yamlpos import PositionMap, load_yaml

Serde = Literal["STRING", "INTEGER", "LONG", "FLOAT", "DOUBLE", "SHORT", "BYTES", "BYTE_ARRAY",
                "UUID", "JSON", "ION", "AVRO", "VOID"]


class OnSerdeError(BaseModel):
    """What to do with a record that cannot be deserialized (G5)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["SKIPPED", "DLQ", "FAIL"] = "SKIPPED"
    topic: str | None = None

    @model_validator(mode="after")
    def _dlq_needs_topic(self) -> OnSerdeError:
        if self.type == "DLQ" and not self.topic:
            raise ValueError("type DLQ needs a `topic` to send bad records to")
        return self


class KafkaTrigger(BaseModel):
    """Connection, topic selection and deserialization shared by the Kafka triggers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=ID_PATTERN)
    groupType: Literal["CONSUMER", "SHARE"] = "CONSUMER"  # first: later fields check it
    topic: str | list[str] | None = None
    topics: list[str] | None = None
    topicPattern: str | None = None
    partitions: list[int] | None = None
    groupId: str = Field(min_length=1)
    since: datetime | None = None
    keyDeserializer: Serde = "STRING"
    valueDeserializer: Serde = "STRING"
    headerFilters: dict[str, str] = Field(default_factory=dict)
    properties: dict[str, str | int | float | bool] = Field(default_factory=dict)
    serdeProperties: dict[str, str] = Field(default_factory=dict)
    onSerdeError: OnSerdeError = Field(default_factory=OnSerdeError)
    onFailure: Literal["CONTINUE", "STOP"] = "CONTINUE"
    maxDeliveries: int | None = Field(
        default=None, ge=1,
        description="SHARE: REJECT a failing record at this delivery count (default: the "
                    "broker's group.share.delivery.count.limit)")
    maxConcurrency: int = Field(default=64, ge=1, le=4096,
                                description="executions in flight per worker")
    keyOrdering: bool = Field(default=False,
                              description="run executions of the same key one after another")

    @model_validator(mode="after")
    def _one_topic_selector(self) -> KafkaTrigger:
        given = [n for n in ("topic", "topics", "topicPattern") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("set exactly one of `topic`, `topics` or `topicPattern`"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.partitions is not None and self.topicPattern:
            raise ValueError("`partitions` cannot be combined with `topicPattern`")
        return self

    @model_validator(mode="after")
    def _avro_needs_registry(self) -> KafkaTrigger:
        avro = "AVRO" in (self.keyDeserializer, self.valueDeserializer)
        if avro and not self.serdeProperties.get("schema.registry.url"):
            raise ValueError("AVRO deserializers need serdeProperties.schema.registry.url")
        return self

    @field_validator("maxDeliveries")
    @classmethod
    def _only_for_share(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("groupType") != "SHARE":
            raise ValueError("`maxDeliveries` applies to groupType SHARE only")
        return value

    @field_validator("topicPattern", "partitions", "since")
    @classmethod
    def _not_for_share(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_for_share(info.data.get("groupType"), info.field_name, value)

    @field_validator("topicPattern")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    def topic_list(self) -> list[str]:
        """The explicitly named topics (empty when ``topicPattern`` is used)."""
        if isinstance(self.topic, str):
            return [self.topic]
        return list(self.topic or self.topics or [])


class RealtimeTrigger(KafkaTrigger):
    """One execution per Kafka record; offsets commit after the execution is done (G1)."""

    type: Literal["kafka.RealtimeTrigger"]


class BatchTrigger(KafkaTrigger):
    """One execution per batch of records, stored as an ION file (``trigger.uri``)."""

    type: Literal["kafka.Trigger"]
    interval: Duration = Field(default=timedelta(minutes=1),
                               description="a batch closes at most this long after its "
                                           "first record")
    maxRecords: int | None = Field(default=None, ge=1, description="cut a batch at this size")
    maxDuration: Duration | None = Field(
        default=None, description="cut a batch this long after its first record")
    pollDuration: Duration | None = Field(
        default=None, description="accepted for Kestra compatibility; the source polls "
                                  "continuously, so it has no effect")

    @model_validator(mode="after")
    def _consumer_group_only(self) -> BatchTrigger:
        if self.groupType == "SHARE":
            raise ValueError("kafka.Trigger supports groupType CONSUMER only (use "
                             "kafka.RealtimeTrigger for share groups)")
        if self.topicPattern:
            raise ValueError("kafka.Trigger needs `topic` or `topics` (no topicPattern)")
        if self.interval.total_seconds() <= 0:
            raise ValueError("`interval` must be positive")
        return self


class ScheduleTrigger(BaseModel):
    """One execution per tick: every ``interval`` (aligned to the epoch) or per ``cron``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=ID_PATTERN)
    type: Literal["schedule.Interval"]
    interval: Duration | None = None
    cron: str | None = Field(default=None, description="5-field cron expression, in UTC")

    @model_validator(mode="after")
    def _one_of(self) -> ScheduleTrigger:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("set exactly one of `interval` (ISO-8601 duration) or `cron`")
        if self.interval is not None and self.interval.total_seconds() <= 0:
            raise ValueError("`interval` must be positive")
        return self

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            from croniter import croniter

            if not croniter.is_valid(value):
                raise ValueError(f"not a valid cron expression: {value!r}")
        return value


AnyTrigger = Annotated[Union[RealtimeTrigger, BatchTrigger, ScheduleTrigger],  # noqa: UP007
                       Field(discriminator="type")]
TRIGGER_TYPES: dict[str, type[BaseModel]] = {"kafka.RealtimeTrigger": RealtimeTrigger,
                                             "kafka.Trigger": BatchTrigger,
                                             "schedule.Interval": ScheduleTrigger}


@functools.cache
def task_union() -> Any:
    """The discriminated union of every registered task type (resolves ``AnyTask``)."""
    # importing these modules registers their task types
    import connectors.bigquery
    import connectors.dbt
    import connectors.duckdb
    import connectors.http
    import connectors.kafka_consume
    import connectors.kafka_produce
    import connectors.notify
    import connectors.s3
    import connectors.snowflake
    import dataflows.core_tasks

    del connectors, dataflows

    classes: tuple[type[TaskBase], ...] = tuple(TASK_TYPES.values())
    union: Any = Annotated[Union[classes], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
    models: list[type[TaskBase]] = [TaskBase, *classes]
    for cls in models:
        cls.model_rebuild(_types_namespace={"AnyTask": union}, force=True)
    return union


class FlowBase(BaseModel):
    """Flow-level properties; ``flow_model()`` adds the typed task lists."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=ID_PATTERN)
    namespace: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    retry: RetrySpec | None = Field(
        default=None, description="default retry for every task that has none of its own")
    triggers: list[AnyTrigger] = Field(min_length=1, max_length=1)
    tasks: list[Any] = Field(min_length=1)
    errors: list[Any] = Field(default_factory=list)

    def all_tasks(self) -> Iterator[tuple[tuple[Hashable, ...], TaskBase]]:
        """Every task, nested ones included, with its path in the flow file."""
        def walk(path: tuple[Hashable, ...], tasks: Sequence[TaskBase]
                 ) -> Iterator[tuple[tuple[Hashable, ...], TaskBase]]:
            for i, task in enumerate(tasks):
                yield (*path, i), task
                for field, children in task.child_lists():
                    yield from walk((*path, i, *field.split(".")), children)
        yield from walk(("tasks",), self.tasks)
        yield from walk(("errors",), self.errors)

    @property
    def trigger(self) -> RealtimeTrigger | BatchTrigger | ScheduleTrigger:
        return self.triggers[0]

    @property
    def kafka_trigger(self) -> KafkaTrigger:
        """The trigger of a Kafka-triggered flow (raises for schedules)."""
        trig = self.triggers[0]
        if not isinstance(trig, KafkaTrigger):
            raise TypeError(f"flow {self.id} has no Kafka trigger")
        return trig


@functools.cache
def flow_model() -> type[FlowBase]:
    """The Flow model with ``tasks``/``errors`` typed as lists of the task union."""
    union = task_union()

    class Flow(FlowBase):
        tasks: list[union] = Field(min_length=1)  # type: ignore[valid-type]
        errors: list[union] = Field(default_factory=list)  # type: ignore[valid-type]

    Flow.__doc__ = "A waxflow flow file."
    return Flow


Flow = FlowBase  # the type to annotate with; instances come from flow_model()


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
            for msg in exprs.check(value):
                problems.append(pos.problem(path, msg))

    for root in ("tasks", "errors"):
        if isinstance(data, dict) and root in data:
            walk(data[root], (root,))
    return problems


def _semantic_problems(flow: FlowBase, pos: PositionMap) -> list[Problem]:
    from operators.retry import check_retry

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
