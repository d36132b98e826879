"""The flow model: flow-level properties and the trigger types (the data a flow file holds).

Pure pydantic models, below every layer that runs flows: the compiler, the operators and the
connectors read them. Loading a file (YAML positions, the task union, every check that names
``file:line:column``) is :mod:`waxflow.dataflows.spec`; ``FlowBase.tasks`` is typed as the
union of all task types there (``flow_model()``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from waxflow.durations import Duration, parse_duration
from waxflow.errors import WaxflowError
from waxflow.expressions import Expressions, check_static
from waxflow.tasks import ID_PATTERN, TASK_ALIASES, TASK_TYPES, RetrySpec, TaskBase

#: Kestra's trigger type names -> ours (each also in its model's ``type`` Literal)
TRIGGER_ALIASES: dict[str, str] = {
    "io.kestra.plugin.kafka.RealtimeTrigger": "kafka.RealtimeTrigger",
    "io.kestra.plugin.kafka.Trigger": "kafka.Trigger",
    "io.kestra.plugin.core.trigger.Schedule": "schedule.Interval",
    "io.kestra.core.models.triggers.types.Schedule": "schedule.Interval",
}


#: the flow-level task lists, in the order an execution runs them
TASK_ROOTS = ("tasks", "errors", "finally", "afterExecution")


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


#: the ``serdeProperties`` keys waxflow's AVRO serdes read (others select nothing): the
#: Confluent-compatible registry's, then the AWS Glue serde's own
#: (``waxflow.connectors.avro.GLUE_KEYS``)
SERDE_PROPERTY_KEYS = frozenset({"schema.registry.url", "basic.auth.user.info", "aws.region",
                                 "aws.glue.endpoint", "aws.access.key.id",
                                 "aws.secret.access.key", "registry.name", "schemaName"})
_CONFLUENT = "io.kestra.plugin.kafka.registry.ConfluentSchemaRegistry"
_GLUE = "io.kestra.plugin.kafka.registry.AwsGlueSchemaRegistry"
#: ``schema.registry.url`` naming the AWS Glue Schema Registry of a region
GLUE_SCHEME = "aws-glue://"
_GLUE_FIELDS = ("region", "endpoint", "accessKey", "secretKey")


class SchemaRegistryVendor(BaseModel):
    """Kestra's ``schemaRegistryVendor``: the registry AVRO values are read (and written)
    through. A Confluent-compatible one (Confluent, Apicurio's ccompat, Redpanda, Karapace:
    ``schemaRegistryUrl``), or the AWS Glue Schema Registry (``region``; ``endpoint`` and
    the keys default to AWS's: boto3's environment variables and credential chain)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["io.kestra.plugin.kafka.registry.ConfluentSchemaRegistry",
                  "io.kestra.plugin.kafka.registry.AwsGlueSchemaRegistry"] = Field(
        description="the registry type: Confluent-compatible, or AWS Glue")
    schemaRegistryUrl: str | None = Field(
        default=None, min_length=1,
        description="Confluent-compatible: the registry's URL (same as "
                    "serdeProperties.schema.registry.url)")
    region: str | None = Field(default=None, min_length=1,
                               description="AWS Glue: the registry's region")
    endpoint: str | None = Field(
        default=None, description="AWS Glue: the API endpoint (default: AWS's, or "
                                  "$AWS_ENDPOINT_URL_GLUE / $AWS_ENDPOINT_URL)")
    accessKey: str | None = Field(
        default=None, description="AWS Glue: the access key id (default: boto3's credential "
                                  "chain), e.g. `{{ secret('AWS_ACCESS_KEY_ID') }}`")
    secretKey: str | None = Field(
        default=None, description="AWS Glue: the secret access key (default: boto3's "
                                  "credential chain), e.g. `{{ secret('AWS_SECRET_ACCESS_KEY') "
                                  "}}`")

    @model_validator(mode="before")
    @classmethod
    def _known_vendor(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if isinstance(kind, str) and kind not in (_CONFLUENT, _GLUE):
            raise ValueError(f"unknown schema registry type {kind!r}: waxflow supports "
                             f"{_CONFLUENT} (any Confluent-compatible registry) and {_GLUE}")
        return data

    @model_validator(mode="after")
    def _fields_of_the_type(self) -> SchemaRegistryVendor:
        if self.type == _GLUE:
            if not self.region:
                raise ValueError("the AWS Glue schema registry needs a `region`")
            if self.schemaRegistryUrl:
                raise ValueError("`schemaRegistryUrl` is for Confluent-compatible registries; "
                                 "AWS Glue takes `region` (and `endpoint`)")
        else:
            if not self.schemaRegistryUrl:
                raise ValueError("a Confluent-compatible registry needs `schemaRegistryUrl`")
            given = [n for n in _GLUE_FIELDS if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: AWS Glue settings; set type {_GLUE}")
        return self

    def properties(self) -> dict[str, str]:
        """The serde properties this vendor stands for."""
        if self.type == _CONFLUENT:
            return {"schema.registry.url": str(self.schemaRegistryUrl)}
        out = {"schema.registry.url": f"{GLUE_SCHEME}{self.region}",
               "aws.region": str(self.region)}
        for key, value in (("aws.glue.endpoint", self.endpoint),
                           ("aws.access.key.id", self.accessKey),
                           ("aws.secret.access.key", self.secretKey)):
            if value:
                out[key] = value
        return out


def registry_properties(serde_properties: Mapping[str, str],
                        vendor: SchemaRegistryVendor | None) -> dict[str, str]:
    """``serdeProperties`` with the vendor's settings (its URL as ``schema.registry.url``);
    ValueError when both name a registry and differ."""
    out = dict(serde_properties)
    if vendor is not None:
        mine = vendor.properties()
        given = out.get("schema.registry.url")
        if given and given.rstrip("/") != mine["schema.registry.url"].rstrip("/"):
            raise ValueError("serdeProperties.schema.registry.url and schemaRegistryVendor "
                             "name different registries")
        out.update(mine)
    return out


def unused_serde_properties(serde_properties: Mapping[str, str]) -> list[str]:
    """The ``serdeProperties`` keys that select nothing in waxflow (for a warning)."""
    return sorted(k for k in serde_properties if k not in SERDE_PROPERTY_KEYS)


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
        description="deserializer settings: schema.registry.url and basic.auth.user.info "
                    "for AVRO (other keys select nothing: a warning at start)")
    schemaRegistryVendor: SchemaRegistryVendor | None = Field(
        default=None, description="Kestra's way to name the AVRO schema registry")
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
        if avro and not self.registry_properties().get("schema.registry.url"):
            raise ValueError("AVRO deserializers need serdeProperties.schema.registry.url "
                             "(or a schemaRegistryVendor)")
        return self

    def registry_properties(self) -> dict[str, str]:
        """``serdeProperties`` with the ``schemaRegistryVendor``'s URL (see
        :func:`registry_properties`)."""
        return registry_properties(self.serdeProperties, self.schemaRegistryVendor)

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
    """One execution per batch of records, stored as an ION file (``trigger.uri``). In a
    share group (``groupType: SHARE``) a batch is one delivery to the group member (at most
    ``maxRecords`` records, soft: the broker hands out whole producer batches), and every
    record of it is acknowledged by the batch execution's outcome."""

    type: Literal["kafka.Trigger", "io.kestra.plugin.kafka.Trigger"] = Field(
        description="the trigger type")
    interval: Duration = Field(default=timedelta(minutes=1),
                               description="a batch closes at most this long after its "
                                           "first record")
    maxRecords: int | None = Field(default=None, ge=1,
                                   description="cut a batch at this size (SHARE: the most "
                                               "records a delivery holds, default 500)")
    maxDuration: Duration | None = Field(
        default=None, description="cut a batch this long after its first record")
    pollDuration: Duration | None = Field(
        default=None, description="accepted for Kestra compatibility; the source polls "
                                  "continuously, so it has no effect")

    @model_validator(mode="after")
    def _batch_settings(self) -> BatchTrigger:
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


class InputError(WaxflowError):
    """A flow input has no value, or a value that does not fit its type (one line)."""


InputType = Literal["STRING", "INT", "FLOAT", "BOOLEAN", "BOOL", "DATETIME", "DATE", "TIME",
                    "DURATION", "FILE", "JSON", "URI", "SECRET", "ARRAY", "ENUM", "SELECT",
                    "MULTISELECT", "YAML", "EMAIL"]
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


class FlowInput(BaseModel):
    """A typed flow input (Kestra's ``inputs``), read as ``{{ inputs.<id> }}``.

    A triggered execution (Kafka, schedule) takes each input's ``defaults``; a manual one
    (``waxflow test``) takes the values given on the command line, else the defaults. A
    value is converted to the input's type once, before the execution starts, or refused
    with one line naming the input: INT/FLOAT are numbers, BOOLEAN a boolean, JSON/YAML the
    parsed value, ARRAY a list of ``itemType``, DATETIME/DATE/TIME/DURATION/URI/EMAIL/STRING
    checked text, FILE the ``file://`` URI of an existing local file (or a storage URI as
    given), SECRET text masked in every log and error like a ``secret()``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=ID_PATTERN, description="the input's name: `{{ inputs.<id> }}`")
    type: InputType = Field(description="the value's type (Kestra's names)")
    description: str | None = Field(default=None, description="free text for people")
    displayName: str | None = Field(default=None, description="a label for people")
    required: bool = Field(default=True,
                           description="an execution needs a value (given, or `defaults`)")
    defaults: Any = Field(default=None, description="the value when none is given")
    values: list[str] | None = Field(default=None,
                                     description="ENUM, SELECT, MULTISELECT: the allowed values")
    itemType: InputType | None = Field(default=None, description="ARRAY: the items' type")
    validator: str | None = Field(default=None,
                                  description="STRING: a regular expression the value matches")
    min: float | None = Field(default=None, description="INT, FLOAT: the smallest value")
    max: float | None = Field(default=None, description="INT, FLOAT: the largest value")

    @model_validator(mode="after")
    def _consistent(self) -> FlowInput:
        if self.type in ("ENUM", "SELECT", "MULTISELECT") and not self.values:
            raise ValueError(f"input type {self.type} needs `values` (the allowed values)")
        if self.type == "ARRAY" and self.itemType is None:
            raise ValueError("input type ARRAY needs `itemType`")
        if self.validator is not None:
            try:
                re.compile(self.validator)
            except re.error as exc:
                raise ValueError(f"`validator` is not a valid regular expression: {exc}"
                                 ) from None
        if self.defaults is not None and self.type not in ("FILE", "SECRET"):
            try:
                self.convert(self.defaults)
            except ValueError as exc:
                raise ValueError(f"`defaults` does not fit type {self.type}: {exc}") from None
        return self

    def convert(self, raw: Any, kind: str | None = None) -> Any:
        """``raw`` (command-line text or a YAML value) as a value of this input's type
        (``kind`` overrides it, for ARRAY items); ValueError saying why not."""
        kind = kind or self.type
        if kind in ("INT", "FLOAT"):
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise ValueError(f"expected a number, got {type(raw).__name__}")
            value: Any = (int(raw) if not isinstance(raw, float) or raw.is_integer()
                          else _no_fraction(raw)) if kind == "INT" else float(raw)
            if self.min is not None and value < self.min:
                raise ValueError(f"{value} is below min {self.min:g}")
            if self.max is not None and value > self.max:
                raise ValueError(f"{value} is above max {self.max:g}")
            return value
        if kind in ("BOOLEAN", "BOOL"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError(f"expected true or false, got {raw!r}")
        if kind == "JSON":
            return json.loads(raw) if isinstance(raw, str) else raw
        if kind == "YAML":
            return yaml.safe_load(raw) if isinstance(raw, str) else raw
        if kind == "ARRAY":
            items = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(items, list):
                raise ValueError("expected a list (or JSON text of one)")
            return [self.convert(item, self.itemType) for item in items]
        if kind == "MULTISELECT":
            items = json.loads(raw) if isinstance(raw, str) and raw.startswith("[") else (
                raw.split(",") if isinstance(raw, str) else raw)
            if not isinstance(items, list):
                raise ValueError("expected a list of values")
            return [self.convert(item, "ENUM") for item in items]
        if not isinstance(raw, str | int | float | date | datetime | time) \
                or isinstance(raw, bool):
            raise ValueError(f"expected text, got {type(raw).__name__}")
        text = raw.isoformat() if isinstance(raw, date | datetime | time) else str(raw)
        if kind in ("ENUM", "SELECT") and text not in (self.values or []):
            raise ValueError(f"{text!r} is not one of {', '.join(self.values or [])}")
        if kind == "DATETIME":
            datetime.fromisoformat(text.replace("Z", "+00:00"))
        elif kind == "DATE":
            date.fromisoformat(text)
        elif kind == "TIME":
            time.fromisoformat(text)
        elif kind == "DURATION":
            parse_duration(text)
        elif kind == "URI" and not urlparse(text).scheme:
            raise ValueError(f"{text!r} is not a URI (no scheme)")
        elif kind == "EMAIL" and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", text):
            raise ValueError(f"{text!r} is not an e-mail address")
        elif kind == "STRING" and self.validator and not re.fullmatch(self.validator, text):
            raise ValueError(f"{text!r} does not match validator {self.validator!r}")
        elif kind == "FILE":
            return _file_uri(text)
        elif kind == "SECRET":
            from waxflow.expressions import register_secret

            register_secret(text)
        return text


class FlowOutput(BaseModel):
    """A flow output (Kestra's flow-level ``outputs``): ``value`` is rendered once the
    execution ends without failing (SUCCESS or WARNING), converted to ``type`` as a flow
    input of that type is (:meth:`FlowInput.convert`), and stored in the execution's
    terminal document (``outputs``). A value that does not render or fit its type fails the
    execution, naming the output."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=ID_PATTERN, description="the output's name in the execution's "
                                                    "`outputs`")
    type: InputType = Field(description="the value's type (Kestra's names, as for inputs)")
    value: Any = Field(description="the value: a template (or a structure of them) rendered "
                                   "at the end of the execution, with every task's outputs")
    description: str | None = Field(default=None, description="free text for people")
    displayName: str | None = Field(default=None, description="a label for people")
    required: bool = Field(default=True, description="accepted for Kestra compatibility: an "
                                                     "output that renders to null fails "
                                                     "the execution unless `required: false`")
    values: list[str] | None = Field(default=None,
                                     description="ENUM, SELECT, MULTISELECT: the allowed values")
    itemType: InputType | None = Field(default=None, description="ARRAY: the items' type")

    @model_validator(mode="after")
    def _consistent(self) -> FlowOutput:
        if self.type in ("ENUM", "SELECT", "MULTISELECT") and not self.values:
            raise ValueError(f"output type {self.type} needs `values` (the allowed values)")
        if self.type == "ARRAY" and self.itemType is None:
            raise ValueError("output type ARRAY needs `itemType`")
        return self

    @field_validator("type")
    @classmethod
    def _no_secret(cls, value: str) -> str:
        if value == "SECRET":
            raise ValueError("output type SECRET is not supported: an output is stored in the "
                             "execution's history, where secrets never appear")
        return value

    def convert(self, rendered: Any) -> Any:
        """The rendered ``value`` as a value of ``type`` (None stays None when not
        ``required``); ValueError saying why not."""
        if rendered is None:
            if self.required:
                raise ValueError("rendered to null (set `required: false` to allow it)")
            return None
        as_input = FlowInput.model_construct(id=self.id, type=self.type, values=self.values,
                                             itemType=self.itemType)
        return as_input.convert(rendered)


def _no_fraction(value: float) -> int:
    raise ValueError(f"expected a whole number, got {value!r}")


def _file_uri(text: str) -> str:
    """A FILE input: a URI with a scheme as given (``s3://``...), a local path (or
    ``file://``) as the ``file://`` URI of an existing file."""
    parsed = urlparse(text)
    if parsed.scheme not in ("", "file"):
        return text
    path = Path(parsed.path if parsed.scheme else text).expanduser()
    if not path.is_file():
        raise ValueError(f"no such file: {text}")
    return path.resolve().as_uri()


class PluginDefault(BaseModel):
    """Default property values for the tasks and triggers of a type (Kestra's
    ``pluginDefaults``): applied when the flow is loaded, before validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str = Field(min_length=1, description="a task or trigger type, either spelling, or a "
                                                "prefix of one ending before a dot "
                                                "(`io.kestra.plugin.kafka`)")
    values: dict[str, Any] = Field(description="property -> value; maps are merged key by "
                                               "key; templates are checked like the task's "
                                               "own (reported at the default's line)")
    forced: bool = Field(default=False, description="the defaults win over the task's own "
                                                    "values")

    @model_validator(mode="after")
    def _templates(self) -> PluginDefault:
        """Check every template in ``values`` as :func:`waxflow.dataflows.spec.parse_flow`
        checks a task's (a trigger's: only its start-time ``properties``), each problem
        located at the template's own place in the default (``values.<key>...``), so that
        ``waxflow validate`` names the default's line, not the line of a task it applies
        to."""
        errors = list(_default_template_errors(self))
        if errors:
            raise ValidationError.from_exception_data("PluginDefault", errors)
        return self


#: the properties rendered once when the job starts (Kafka client and registry settings),
#: with ``env.*``/``secret()``/``now()`` only, never per record
STATIC_PROPERTIES = frozenset({"properties", "serdeProperties"})


def _default_template_errors(default: PluginDefault) -> Iterator[InitErrorDetails]:
    """The template problems of a plugin default's ``values`` (see
    :meth:`PluginDefault._templates`), as pydantic error details located under ``values``."""
    exprs = _checking_expressions()
    trigger = any(n in TRIGGER_TYPES for n in _spellings(default.type))

    def walk(value: Any, loc: tuple[str | int, ...]) -> Iterator[InitErrorDetails]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield from walk(v, (*loc, str(k)))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from walk(v, (*loc, i))
        elif isinstance(value, str) and ("{{" in value or "{%" in value):
            static = any(part in STATIC_PROPERTIES for part in loc)
            if trigger and not static:
                return  # only a trigger's client properties are rendered
            for message in (check_static(exprs, value) if static else exprs.check(value)):
                yield InitErrorDetails(type=PydanticCustomError("template", "{message}",
                                                                {"message": message}),
                                       loc=loc, input=value)

    yield from walk(default.values, ("values",))


@functools.cache
def _checking_expressions() -> Expressions:
    """One :class:`~waxflow.expressions.Expressions` for template checks (compiled once)."""
    return Expressions()


class Concurrency(BaseModel):
    """Kestra's ``concurrency``: at most ``limit`` executions of the flow run at a time."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    limit: int = Field(ge=1, description="executions running at once, per worker (a realtime "
                                         "flow's `maxConcurrency` is lowered to it)")
    behavior: Literal["QUEUE"] = Field(
        default="QUEUE", description="QUEUE: later executions wait their turn (the only "
                                     "value: waxflow never drops or fails a record for it)")

    @field_validator("behavior", mode="before")
    @classmethod
    def _only_queue(cls, value: Any) -> Any:
        if value in ("CANCEL", "FAIL"):
            raise ValueError(f"behavior {value} is not supported: waxflow runs every record's "
                             "execution (a cancelled one would be a lost record); use QUEUE")
        return value


def _spellings(type_name: str) -> set[str]:
    """Every accepted spelling of a task or trigger type."""
    canonical = TASK_ALIASES.get(type_name) or TRIGGER_ALIASES.get(type_name) or type_name
    return {type_name, canonical,
            *(a for a, n in (*TASK_ALIASES.items(), *TRIGGER_ALIASES.items()) if n == canonical)}


def _merged(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: maps merged key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merged(base.get(k), v) if k in base else v
                           for k, v in over.items()}}
    return over


def _property_names(spellings: set[str]) -> set[str] | None:
    """The properties of the task or trigger type spelled ``spellings`` (None: unknown)."""
    for name in spellings:
        model = TASK_TYPES.get(name) or TRIGGER_TYPES.get(name)
        if model is not None:
            return {f.alias or n for n, f in model.model_fields.items()}
    return None


def apply_plugin_defaults(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The raw flow document with its ``pluginDefaults`` applied to every task (nested ones
    too) and trigger whose type (either spelling) is, or starts with, a default's ``type``;
    several matching defaults apply in file order. A default naming a package
    (``io.kestra.plugin.kafka``) gives each type only the properties it has; one naming
    the type gives all (an unknown one is then reported). Malformed defaults are left for
    the model to report."""
    raw = data.get("pluginDefaults")
    if not isinstance(raw, list) or not raw:
        return data
    defaults = [d for d in raw if isinstance(d, dict) and isinstance(d.get("type"), str)
                and isinstance(d.get("values"), dict)]

    def applied(item: dict[str, Any]) -> dict[str, Any]:
        names = _spellings(str(item["type"]))
        known = _property_names(names)
        for d in defaults:
            prefix = str(d["type"])
            exact = prefix in names
            if exact or any(n.startswith(prefix + ".") for n in names):
                # a default for a package applies the properties each type has
                values = {k: v for k, v in d["values"].items() if k not in ("id", "type")
                          and (exact or known is None or k in known)}
                item = _merged(item, values) if d.get("forced") is True \
                    else _merged(values, item)
        return item

    def walk(value: Any, in_list: bool) -> Any:
        if isinstance(value, list):
            return [walk(v, True) for v in value]
        if isinstance(value, dict):
            out = {k: walk(v, False) for k, v in value.items()}
            if in_list and isinstance(out.get("id"), str) and isinstance(out.get("type"), str):
                out = applied(out)
            return out
        return value

    return {**data, **{root: walk(data[root], False)
                       for root in (*TASK_ROOTS, "triggers") if root in data}}



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
    inputs: list[FlowInput] = Field(
        default_factory=list,
        description="typed inputs, read as `{{ inputs.<id> }}`: every execution takes the "
                    "values given by `waxflow run/test --input NAME=VALUE`, else their "
                    "`defaults`; a required input with neither stops `waxflow run` before "
                    "it starts, naming the input")
    variables: dict[str, Any] = Field(
        default_factory=dict,
        description="constants read as `{{ vars.<name> }}` (not rendered themselves, as in "
                    "Kestra)")
    pluginDefaults: list[PluginDefault] = Field(
        default_factory=list,
        description="default property values per task or trigger type, applied when the "
                    "flow is loaded (the task's own values win unless `forced`)")
    concurrency: Concurrency | None = Field(
        default=None, description="at most `limit` executions run at once (per worker)")
    finally_: list[Any] = Field(
        default_factory=list, alias="finally",
        description="tasks that always run once `tasks` (and, after a failure, `errors`) are "
                    "done; a failing one fails the execution; `{{ execution.state }}` is "
                    "RUNNING there (the final state is not known yet)")
    afterExecution: list[Any] = Field(
        default_factory=list,
        description="tasks run once the execution has its final state (SUCCESS, WARNING or "
                    "FAILED), read as `{{ execution.state }}`; their failure is recorded in "
                    "their task runs and never changes that state")
    outputs: list[FlowOutput] = Field(
        default_factory=list,
        description="typed values rendered when the execution ends without failing, stored "
                    "in its history document (`outputs`); one that does not render fails it")
    extend: dict[str, Any] | None = Field(
        default=None,
        description="Kestra's blueprint metadata (`title`, `description`, `tags`...): "
                    "accepted and ignored (`waxflow validate` and `waxflow run` say so in a "
                    "note)")

    @model_validator(mode="before")
    @classmethod
    def _plugin_defaults(cls, data: Any) -> Any:
        return apply_plugin_defaults(data) if isinstance(data, dict) else data

    @field_validator("inputs", "outputs")
    @classmethod
    def _unique_ids(cls, value: list[FlowInput] | list[FlowOutput], info: ValidationInfo
                    ) -> list[FlowInput] | list[FlowOutput]:
        ids = [i.id for i in value]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:  # (checked once every item is valid on its own)
            kind = "input" if info.field_name == "inputs" else "output"
            raise ValueError(f"duplicate {kind} id {', '.join(map(repr, twice))}")
        return value

    def input_values(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``inputs.*`` of an execution: each input's given value, else its default, else
        None (not required), converted to its type; raises :class:`InputError` naming the
        input (missing, unknown or not fitting its type)."""
        given = dict(given or {})
        known = {i.id for i in self.inputs}
        unknown = sorted(set(given) - known)
        if unknown:
            raise InputError(f"flow {self.namespace}.{self.id} has no input "
                             f"{', '.join(map(repr, unknown))} (its inputs: "
                             f"{', '.join(sorted(known)) or 'none'})")
        out: dict[str, Any] = {}
        for item in self.inputs:
            raw = given.get(item.id, item.defaults)
            if raw is None:
                if item.required:
                    raise InputError(f"input '{item.id}' ({item.type}) of flow "
                                     f"{self.namespace}.{self.id} is required: give it with "
                                     f"--input {item.id}=VALUE")
                out[item.id] = None
                continue
            try:
                out[item.id] = item.convert(raw)
            except (ValueError, yaml.YAMLError) as exc:
                reason = str(exc).splitlines()[0][:200]
                raise InputError(f"input '{item.id}' ({item.type}): {reason}") from None
        return out

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
        yield from walk(("finally",), self.finally_)
        yield from walk(("afterExecution",), self.afterExecution)

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
                + ("enabled " if self.triggers else "") + "trigger (a manual flow): "
                "`waxflow run FLOW` runs it once, `waxflow test FLOW` runs it once dry")
        return enabled[0]

    @property
    def kafka_trigger(self) -> KafkaTrigger:
        """The trigger of a Kafka-triggered flow (raises for schedules)."""
        trig = self.trigger
        if not isinstance(trig, KafkaTrigger):
            raise TypeError(f"flow {self.id} has no Kafka trigger")
        return trig


Flow = FlowBase  # the type to annotate with; instances come from flow_model()
