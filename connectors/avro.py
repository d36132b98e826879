"""AVRO serdes through a Confluent-compatible schema registry (``confluent_kafka.schema_registry``).

``serdeProperties`` carries ``schema.registry.url`` (``mock://name`` for the client's
in-process registry) and optional ``basic.auth.user.info``. The serializer registers the
given schema under ``<topic>-key``/``<topic>-value`` and writes Confluent's wire format; the
deserializer reads the schema id from the payload. A value that does not fit its schema
raises :class:`~waxflow.connectors.serdes.SerdeError` with fastavro's reason.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from waxflow.connectors.serdes import SerdeError

TopicSerializer = Callable[[Any, str], bytes | None]


@functools.lru_cache(maxsize=16)
def _client(conf_items: tuple[tuple[str, Any], ...]) -> Any:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    # new_client returns the in-process mock for mock:// URLs, the HTTP client otherwise
    return SchemaRegistryClient.new_client(dict(conf_items))


def _registry(serde_properties: Mapping[str, str]) -> Any:
    url = serde_properties.get("schema.registry.url")
    if not url:
        raise SerdeError("AVRO needs serdeProperties.schema.registry.url")
    conf: dict[str, Any] = {"url": url, "timeout": 10}
    if "basic.auth.user.info" in serde_properties:
        conf["basic.auth.user.info"] = serde_properties["basic.auth.user.info"]
    return _client(tuple(sorted(conf.items())))


def avro_serializer(serde_properties: Mapping[str, str], schema: str | None,
                    field: str) -> TopicSerializer:
    """A serializer ``(value, topic) -> bytes`` for the key or value ``field``."""
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    if not schema:
        raise SerdeError(f"AVRO {field} needs {field}AvroSchema")
    try:
        ser = AvroSerializer(_registry(serde_properties), schema,
                             conf={"auto.register.schemas": True})
    except Exception as exc:  # malformed schema JSON / not an AVRO schema
        raise SerdeError(f"{field}AvroSchema is not a valid AVRO schema: "
                         f"{str(exc).strip().splitlines()[0][:200]}") from None
    which = MessageField.KEY if field == "key" else MessageField.VALUE

    def serialize(value: Any, topic: str) -> bytes | None:
        if value is None:
            return None
        try:
            out: bytes | None = ser(value, SerializationContext(topic, which))
            return out
        except Exception as exc:
            raise SerdeError(str(exc).strip().splitlines()[0][:300]) from None

    return serialize


def avro_deserializer(serde_properties: Mapping[str, str]) -> Callable[[bytes | None], Any]:
    """A deserializer for Confluent-framed AVRO payloads (schema looked up by id)."""
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    de = AvroDeserializer(_registry(serde_properties))
    ctx = SerializationContext("", MessageField.VALUE)

    def deserialize(data: bytes | None) -> Any:
        if data is None:
            return None
        try:
            return de(data, ctx)
        except Exception as exc:
            raise SerdeError(f"not AVRO of a registered schema: "
                             f"{str(exc).strip().splitlines()[0][:300]}") from None

    return deserialize
