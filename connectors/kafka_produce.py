"""``kafka.Produce``: publish records from a flow, transactional by default.

``from`` is one record (a map), a list of them, or a file (``file://`` URI or path; ``.ion``
is an ION stream, anything else NDJSON). A record is a map holding any of ``key``,
``value``, ``topic``, ``partition``, ``timestamp`` (epoch ms or ISO-8601) and ``headers``;
any other item of the list is taken as a bare value. Every record carries the
header ``waxflow.execution.id`` naming the execution that produced it, so a flow triggered by
it records its upstream and ``waxflow executions trace`` follows the chain.

Guarantees: all records are serialized before the first is sent, so a value that does not fit
its serializer fails the task (naming the record and the field) with nothing sent; every
delivery is acknowledged before the consumed offset past the execution's record is
committed; in a consumer-group flow a transactional Produce joins a transaction committed
together with the consumed offsets (G3).

In a consumer-group flow the task does not block. A transactional one buffers its records;
once its execution is done they go into the worker's next epoch transaction, which commits
them with the offsets below which every execution is done
(:mod:`waxflow.operators.transactions`). A non-transactional one enqueues its records, and
their deliveries are checked before the execution counts as done (its offset committed):
with the terminal document, at the epoch's snapshot (:mod:`waxflow.operators.pipeline`).
A record that fails then fails its execution (state FAILED, its terminal document written
again; the error names the task and the record; the task's ``errors`` handlers and
``allowFailure`` do not apply to such a late failure); inside a transaction it aborts the
transaction, which is redone without that execution's records.
(A share group has no offsets to commit: there a transactional Produce task run commits its
own transaction before it returns; its record is acked once its execution is done.)
Elsewhere (replay, ``waxflow test``, schedules, batch flows) the task waits for its
deliveries itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from waxflow.connectors.deliveries import Deliveries
from waxflow.connectors.execution_log import LOG_HEADER
from waxflow.connectors.kafka_config import client_conf
from waxflow.connectors.kafka_source import cluster_metadata
from waxflow.connectors.serdes import SerdeError, Serializer, serializer
from waxflow.errors import DeliveryError, SourceStop
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

SerdeName = Literal["STRING", "INTEGER", "LONG", "FLOAT", "DOUBLE", "SHORT", "BYTES",
                    "BYTE_ARRAY", "UUID", "JSON", "ION", "VOID", "AVRO"]
RECORD_KEYS = frozenset({"key", "value", "topic", "partition", "timestamp", "headers"})
#: how long the first Produce to a cluster waits for it (kafka.Consume's bound, same message)
REACH_TIMEOUT = 15.0
_reached: set[str] = set()  # bootstrap lists this process has reached once
#: a record ready to send: (topic, key, value, headers, partition, timestamp)
Prepared = tuple[str, bytes | None, bytes | None, list[tuple[str, str | bytes | None]],
                 int | None, int | None]
_CONNECTION_KEYS = ("bootstrap.servers", "security.protocol", "sasl.", "ssl.", "socket.",
                    "client.", "broker.address.family", "enable.ssl", "logger", "error_cb",
                    "log_level")


def _check_reachable(conf: dict[str, Any]) -> None:
    """Fail fast, naming the address, when the cluster cannot be reached at all (else a
    producer waits for its transaction or delivery timeouts, a minute or more, and says
    neither where nor why). Checked once per cluster and process: later outages are the
    producers' business (they wait for the broker to come back)."""
    servers = str(conf.get("bootstrap.servers"))
    if servers in _reached:
        return
    probe = {k: v for k, v in conf.items() if k.startswith(_CONNECTION_KEYS)}
    try:
        cluster_metadata({**probe, "group.id": "waxflow-produce-probe"}, REACH_TIMEOUT)
    except SourceStop as exc:
        raise TaskFailure(str(exc)) from None
    _reached.add(servers)


def _timestamp(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    try:
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        raise TaskFailure(f"timestamp {value!r} is neither epoch milliseconds nor ISO-8601"
                          ) from None


def load_records(source: Any) -> list[dict[str, Any]]:
    """The records ``from`` designates (see module doc)."""
    if isinstance(source, dict):
        return [source]
    if isinstance(source, list):
        return list(source)
    if isinstance(source, str):
        # storage (pyarrow, ION) loaded only when a flow produces from a file: a per-record
        # flow that never does keeps ~40 MB less resident
        from waxflow.connectors.storage import StorageError, read_records

        path = Path(source.removeprefix("file://"))
        try:
            if path.suffix == ".ion":  # binary or text ION, e.g. a stored batch
                return list(read_records(source))
            with path.open(encoding="utf-8") as fp:
                return [json.loads(line) for line in fp if line.strip()]
        except FileNotFoundError:
            raise TaskFailure(f"`from` file {source} does not exist") from None
        except StorageError as exc:
            raise TaskFailure(f"`from` file: {exc}") from None
        except (OSError, ValueError) as exc:
            raise TaskFailure(f"`from` file {source} cannot be read: {exc}") from None
    raise TaskFailure(f"`from` must be a map, a list of maps or a file URI, got "
                      f"{type(source).__name__}")


@task_type("kafka.Produce", aliases=("io.kestra.plugin.kafka.Produce",))
class Produce(TaskBase):
    """Produce records to Kafka; outputs ``messagesCount``."""

    type: Literal["kafka.Produce"] = Field(description="the task type")
    from_: Any = Field(
        alias="from",
        description="what to produce: an internal-storage URI (ION file), a map, or a list "
                    "of maps; a map may hold key, value, topic, partition, timestamp (epoch ms "
                    "or ISO) and headers")
    topic: str | None = Field(default=None,
                              description="the topic (when a record does not name one)")
    keySerializer: SerdeName = Field(default="STRING", description="how keys are written")
    valueSerializer: SerdeName = Field(default="STRING",
                                       description="how values are written")
    keyAvroSchema: str | None = Field(default=None,
                                      description="Avro schema of the keys (AVRO)")
    valueAvroSchema: str | None = Field(default=None,
                                        description="Avro schema of the values (AVRO)")
    properties: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="librdkafka producer properties (bootstrap.servers, "
                                          "SASL, SSL, ...)")
    serdeProperties: dict[str, str] = Field(
        default_factory=dict, description="serializer settings, e.g. schema.registry.url")
    headers: dict[str, str] = Field(default_factory=dict,
                                    description="headers added to every record")
    partition: int | None = Field(default=None,
                                  description="the partition (default: by key)")
    transactional: bool = Field(
        default=True,
        description="in a consumer-group flow, the records commit with the consumed offsets "
                    "in one Kafka transaction (exactly once); false: at-least-once")

    model_config = {**TaskBase.model_config, "populate_by_name": True}

    #: never blocks in a consumer-group flow (see the module doc): runs on the worker thread
    BLOCKING: ClassVar[bool] = False
    _conf: dict[str, Any] | None = PrivateAttr(default=None)
    #: the key and value serializers, built once
    _sers: tuple[Callable[[Any, str], bytes | None],
                 Callable[[Any, str], bytes | None]] | None = PrivateAttr(default=None)

    def client_conf(self) -> dict[str, Any]:
        """The producer config: ``properties`` rendered once (static templates only)."""
        private: dict[str, Any] = self.__pydantic_private__  # type: ignore[assignment]
        conf: dict[str, Any] | None = private["_conf"]  # (one look-up, not pydantic's)
        if conf is None:
            conf = private["_conf"] = client_conf(self.properties)
        return conf

    def _serializer(self, name: str, schema: str | None, field: str
                    ) -> Callable[[Any, str], bytes | None]:
        if name == "AVRO":
            from waxflow.connectors.avro import avro_serializer

            try:
                return avro_serializer(self.serdeProperties, schema, field)
            except SerdeError as exc:
                raise TaskFailure(str(exc)) from None
        plain: Serializer = serializer(name)
        return lambda value, _topic: plain(value)

    def serializers(self) -> tuple[Callable[[Any, str], bytes | None],
                                   Callable[[Any, str], bytes | None]]:
        """The key and value serializers, built once."""
        private: dict[str, Any] = self.__pydantic_private__  # type: ignore[assignment]
        sers = private["_sers"]  # (one look-up, not pydantic's per attribute)
        if sers is None:
            sers = private["_sers"] = (
                self._serializer(self.keySerializer, self.keyAvroSchema, "key"),
                self._serializer(self.valueSerializer, self.valueAvroSchema, "value"))
        return sers  # type: ignore[no-any-return]

    def prepare(self, items: list[Any], default_topic: Any, task_headers: dict[str, str],
                exec_id: str) -> list[Prepared]:
        """The records to send for ``items`` (what ``from`` designates, :func:`load_records`)
        with the rendered ``topic`` and ``headers``: every record serialized before any is
        sent; a record that does not fit fails the task (TaskFailure naming it)."""
        ser_key, ser_value = self.serializers()
        prepared: list[Prepared] = []
        own = exec_id.encode()
        fixed = [(k, v.encode()) for k, v in task_headers.items()]
        default_part = self.partition  # (pydantic attributes: read once)
        for i, item in enumerate(items):
            if not isinstance(item, dict) or RECORD_KEYS.isdisjoint(item):
                item = {"value": item}  # a bare value (e.g. an item of an API response)
            topic = item.get("topic") or default_topic
            if not topic:
                raise TaskFailure(f"record {i}: no `topic` on the record or the task")
            name = str(topic)
            field = "key"
            try:
                key = ser_key(item.get("key"), name)
                field = "value"
                value = ser_value(item.get("value"), name)
            except SerdeError as exc:
                serde = self.keySerializer if field == "key" else self.valueSerializer
                raise TaskFailure(f"record {i} field `{field}` does not fit {serde}: {exc}"
                                  ) from None
            headers: list[tuple[str, str | bytes | None]] = [(LOG_HEADER, own)]
            if fixed:
                headers += fixed
            extra = item.get("headers")
            if extra:
                headers += [(str(k), str(v).encode()) for k, v in extra.items()]
            part = item.get("partition", default_part)
            stamp = item.get("timestamp")
            prepared.append((name, key, value, headers,
                             int(part) if part is not None else None,
                             None if stamp is None else _timestamp(stamp)))
        return prepared

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        items = load_records(ctx.render(self.from_))
        default_topic = ctx.render(self.topic) if self.topic else None
        task_headers = ({k: str(v) for k, v in ctx.render(self.headers).items()}
                        if self.headers else {})
        exec_id = str(ctx.vars["execution"]["id"])
        prepared = self.prepare(items, default_topic, task_headers, exec_id)
        conf = self.client_conf()
        scope = getattr(ctx, "batch", None)
        deferring = getattr(scope, "deferring", False)
        # where the task waits for its deliveries itself (replay, schedules, batch flows), an
        # unreachable cluster fails fast; `waxflow test` captures (never connects), and in a
        # consumer-group flow (deferring) the batch rides out outages instead
        if not deferring and not getattr(scope, "DRY_RUN", False):
            _check_reachable(conf)
        deliveries: Deliveries
        if scope is not None:
            deliveries = scope.deliveries(conf, self.transactional)
        else:
            from waxflow.connectors.kafka_output import KafkaOutput

            deliveries = KafkaOutput("task", None).scope().deliveries(conf, self.transactional)
        for topic, key, value, headers, part, ts in prepared:
            deliveries.produce(topic, key, value, headers, partition=part, timestamp=ts)
        if deferring and deliveries.deferrable:
            # in a consumer-group flow: the deliveries are checked once for the batch (or
            # before the execution counts as done), not waited for here
            scope.defer(exec_id, self.id, deliveries)  # type: ignore[union-attr]
            return {"messagesCount": len(prepared)}
        try:
            deliveries.wait()
        except DeliveryError as exc:
            if scope is not None and self.transactional and hasattr(scope, "poison"):
                scope.poison(exec_id)  # the batch's transaction must abort and re-run
            raise TaskFailure(str(exc)) from None
        return {"messagesCount": len(prepared)}
