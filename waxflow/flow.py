"""The flow model: flow-level properties and the trigger types (the data a flow file holds).

Pure pydantic models, below every layer that runs flows: the compiler, the operators and the
connectors read them. Loading a file (YAML positions, the task union, every check that names
``file:line:column``) is :mod:`waxflow.dataflows.spec`; ``FlowBase.tasks`` is typed as the
union of all task types there (``flow_model()``).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from waxflow.durations import Duration
from waxflow.tasks import ID_PATTERN, RetrySpec, TaskBase


def refuse_for_share(group_type: str | None, name: str | None, value: Any) -> Any:
    """``value`` of option ``name``, refused (ValueError) when set for ``groupType: SHARE``
    (for pydantic field validators of triggers and tasks)."""
    if value is not None and group_type == "SHARE":
        raise ValueError(f"groupType SHARE does not support `{name}`: share groups hand out "
                         "records, not partitions or offsets")
    return value


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


Flow = FlowBase  # the type to annotate with; instances come from flow_model()
