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
from waxflow.errors import WaxflowError
from waxflow.tasks import ID_PATTERN, RetrySpec, TaskBase

#: Kestra's trigger type names -> ours (each also in its model's ``type`` Literal)
TRIGGER_ALIASES: dict[str, str] = {
    "io.kestra.plugin.kafka.RealtimeTrigger": "kafka.RealtimeTrigger",
    "io.kestra.plugin.kafka.Trigger": "kafka.Trigger",
    "io.kestra.plugin.core.trigger.Schedule": "schedule.Interval",
    "io.kestra.core.models.triggers.types.Schedule": "schedule.Interval",
}


class NoTrigger(WaxflowError):
    """The flow has no (enabled) trigger: it cannot be run as a job."""


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
    type: Literal["SKIPPED", "DLQ", "FAIL"] = Field(
        default="SKIPPED",
        description="SKIPPED: record a SKIPPED execution and go on; DLQ: also send the record "
                    "to `topic` with headers naming its source and the error; FAIL: stop the "
                    "job without committing the record")
    topic: str | None = Field(default=None, description="the dead-letter topic (type DLQ)")

    @model_validator(mode="after")
    def _dlq_needs_topic(self) -> OnSerdeError:
        if self.type == "DLQ" and not self.topic:
            raise ValueError("type DLQ needs a `topic` to send bad records to")
        return self


class KafkaTrigger(BaseModel):
    """Connection, topic selection and deserialization shared by the Kafka triggers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=ID_PATTERN, description="the trigger's id (letters, digits, _ -)")
    description: str | None = Field(default=None, description="free text for people")
    disabled: bool = Field(default=False,
                           description="a disabled trigger starts nothing (the flow is then "
                                       "a manual one)")
    groupType: Literal["CONSUMER", "SHARE"] = Field(  # first: later fields check it
        default="CONSUMER",
        description="CONSUMER: a consumer group, offsets committed once the work is done; "
                    "SHARE: a share group (KIP-932), each record acknowledged by outcome")
    topic: str | list[str] | None = Field(
        default=None, description="the topic to read (or a list of topics)")
    topics: list[str] | None = Field(default=None, description="the topics to read")
    topicPattern: str | None = Field(
        default=None, description="a regular expression; the matching topics are read "
                                  "(resolved when the job starts)")
    partitions: list[int] | None = Field(
        default=None, description="read only these partitions of each topic (manual "
                                  "assignment)")
    groupId: str = Field(min_length=1, description="the consumer (or share) group id")
    since: datetime | None = Field(
        default=None, description="ISO-8601 timestamp to start from when the group has no "
                                  "committed offset")
    keyDeserializer: Serde = Field(default="STRING", description="how record keys are read")
    valueDeserializer: Serde = Field(default="STRING",
                                     description="how record values are read")
    headerFilters: dict[str, str] = Field(
        default_factory=dict,
        description="header name -> value; only records whose headers all match start an "
                    "execution (the others advance without one)")
    properties: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="librdkafka client properties (bootstrap.servers, SASL, SSL, ...); "
                    "default bootstrap: $WAXFLOW_BOOTSTRAP or 127.0.0.1:9092")
    serdeProperties: dict[str, str] = Field(
        default_factory=dict,
        description="deserializer settings, e.g. schema.registry.url for AVRO")
    onSerdeError: OnSerdeError = Field(
        default_factory=OnSerdeError,
        description="what happens to a record that cannot be deserialized")
    onFailure: Literal["CONTINUE", "STOP"] = Field(
        default="CONTINUE",
        description="CONTINUE: a FAILED execution is recorded and its offset advances; STOP: "
                    "the job halts without committing the record, which replays after a fix")
    acknowledgeType: Literal["ACCEPT"] | None = Field(
        default=None,
        description="SHARE, accepted for Kestra compatibility: waxflow acknowledges each "
                    "record by the outcome of its execution (ACCEPT after success, RELEASE "
                    "after a failure while deliveries remain, REJECT at the limit), so "
                    "ACCEPT is the only value; Kestra's fixed RELEASE/REJECT/RENEW are refused")
    maxDeliveries: int | None = Field(
        default=None, ge=1,
        description="SHARE: REJECT a failing record at this delivery count (default: the "
                    "broker's group.share.delivery.count.limit)")
    maxConcurrency: int = Field(default=64, ge=1, le=4096,
                                description="executions in flight per worker")
    keyOrdering: bool = Field(default=False,
                              description="run executions of the same key one after another")

    @field_validator("type", mode="after", check_fields=False)
    @classmethod
    def _canonical_type(cls, value: str) -> str:
        return TRIGGER_ALIASES.get(value, value)

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

    @field_validator("acknowledgeType", mode="before")
    @classmethod
    def _ack_type(cls, value: Any) -> Any:
        if isinstance(value, str) and value in ("RELEASE", "REJECT", "RENEW"):
            raise ValueError(
                f"acknowledgeType {value} is not supported: waxflow acknowledges each record "
                "by its execution's outcome (ACCEPT on success, RELEASE on failure while "
                "deliveries remain, REJECT at maxDeliveries); remove the property or use "
                "ACCEPT")
        return value

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

    type: Literal["kafka.RealtimeTrigger", "io.kestra.plugin.kafka.RealtimeTrigger"] = Field(
        description="the trigger type")


class BatchTrigger(KafkaTrigger):
    """One execution per batch of records, stored as an ION file (``trigger.uri``)."""

    type: Literal["kafka.Trigger", "io.kestra.plugin.kafka.Trigger"] = Field(
        description="the trigger type")
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
    id: str = Field(pattern=ID_PATTERN, description="the trigger's id (letters, digits, _ -)")
    type: Literal["schedule.Interval", "io.kestra.plugin.core.trigger.Schedule",
                  "io.kestra.core.models.triggers.types.Schedule"] = Field(
        description="the trigger type")
    interval: Duration | None = Field(
        default=None, description="ISO-8601 duration between ticks (aligned to multiples of "
                                  "it since the Unix epoch)")
    cron: str | None = Field(default=None, description="5-field cron expression, in UTC "
                                                       "(6 fields with `withSeconds`)")
    withSeconds: bool = Field(
        default=False, description="`cron` has 6 fields, seconds first (Kestra's spelling)")
    description: str | None = Field(default=None, description="free text for people")
    disabled: bool = Field(default=False,
                           description="a disabled trigger starts nothing (the flow is then "
                                       "a manual one)")

    @field_validator("type", mode="after")
    @classmethod
    def _canonical_type(cls, value: str) -> str:
        return TRIGGER_ALIASES.get(value, value)

    @model_validator(mode="before")
    @classmethod
    def _seconds_last(cls, data: Any) -> Any:
        # Kestra (Quartz) writes seconds first; croniter reads them as the 6th field
        if isinstance(data, dict) and data.get("withSeconds") is True \
                and isinstance(data.get("cron"), str):
            fields = data["cron"].split()
            if len(fields) != 6:
                raise ValueError("`withSeconds: true` needs a 6-field cron (seconds first)")
            data = {**data, "cron": " ".join([*fields[1:], fields[0]]), "withSeconds": False}
        return data

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
    id: str = Field(pattern=ID_PATTERN,
                    description="the flow's id; with the namespace it names the flow in the "
                                "history and derives its execution ids")
    namespace: str = Field(pattern=r"^[A-Za-z0-9_.-]+$",
                           description="the flow's namespace (letters, digits, _ . -)")
    description: str | None = Field(default=None, description="free text for people")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="name -> value (or Kestra's list of {key, value}), copied into every "
                    "execution")
    disabled: bool = Field(default=False,
                           description="a disabled flow is valid but `waxflow run` refuses "
                                       "to start it")
    retry: RetrySpec | None = Field(
        default=None, description="default retry for every task that has none of its own")
    triggers: list[AnyTrigger] = Field(
        default_factory=list,
        description="what starts executions: one enabled trigger (several are refused); "
                    "none makes a manual flow, run with `waxflow test`")
    tasks: list[Any] = Field(min_length=1, description="the tasks of an execution, in order")
    errors: list[Any] = Field(default_factory=list,
                              description="tasks run when an execution fails")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_list(cls, value: Any) -> Any:
        if isinstance(value, list):  # Kestra's other spelling: [{key: k, value: v}, ...]
            out: dict[str, Any] = {}
            for item in value:
                if not (isinstance(item, dict) and set(item) == {"key", "value"}):
                    raise ValueError("a list of labels holds mappings with `key` and `value`")
                out[str(item["key"])] = item["value"]
            return out
        return value

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
    def enabled_triggers(self) -> list[RealtimeTrigger | BatchTrigger | ScheduleTrigger]:
        return [t for t in self.triggers if not t.disabled]

    @property
    def trigger(self) -> RealtimeTrigger | BatchTrigger | ScheduleTrigger:
        """The flow's (one enabled) trigger; raises :class:`NoTrigger` for a manual flow."""
        enabled = self.enabled_triggers
        if not enabled:
            raise NoTrigger(
                f"flow {self.namespace}.{self.id} has no "
                + ("enabled " if self.triggers else "") + "trigger: `waxflow run` needs one "
                "(a Kafka trigger or a schedule); `waxflow test FLOW` runs it once")
        return enabled[0]

    @property
    def kafka_trigger(self) -> KafkaTrigger:
        """The trigger of a Kafka-triggered flow (raises for schedules)."""
        trig = self.trigger
        if not isinstance(trig, KafkaTrigger):
            raise TypeError(f"flow {self.id} has no Kafka trigger")
        return trig


Flow = FlowBase  # the type to annotate with; instances come from flow_model()
