"""AVRO serdes through a Confluent-compatible schema registry (``confluent_kafka.schema_registry``).

``serdeProperties`` carries ``schema.registry.url`` (``mock://name`` for the client's
in-process registry) and optional ``basic.auth.user.info``. The serializer registers the
given schema under ``<topic>-key``/``<topic>-value`` and writes Confluent's wire format; the
deserializer reads the schema id from the payload. A value that does not fit its schema
raises :class:`~waxflow.connectors.serdes.SerdeError` with fastavro's reason.

AWS Glue Schema Registry: ``schema.registry.url: aws-glue://REGION`` (what Kestra's
``schemaRegistryVendor`` type ``AwsGlueSchemaRegistry`` maps to) selects AWS's wire format
and the Glue API (boto3) instead, with the AWS serde's own keys for the endpoint, the
credentials and the registry and schema names (:data:`GLUE_KEYS`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from waxflow.connectors.serdes import SerdeError
from waxflow.tasks import TaskFailure

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
    """A serializer ``(value, topic) -> bytes`` for the key or value ``field`` (AWS Glue's
    wire format when ``schema.registry.url`` is ``aws-glue://REGION``)."""
    if is_glue(serde_properties):
        return glue_avro_serializer(serde_properties, schema, field)
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
            if _unreachable(exc):  # not the value's fault: the task fails (and may retry)
                raise TaskFailure(f"cannot reach the schema registry at "
                                  f"{serde_properties.get('schema.registry.url')}: "
                                  f"{_first_line(exc)}") from None
            raise SerdeError(_first_line(exc)) from None

    return serialize


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is the registry's transport failing (the
    client's HTTP library: a ``TransportError``), not a value that does not fit."""
    seen: BaseException | None = exc
    while seen is not None:
        if any(c.__name__ == "TransportError" for c in type(seen).__mro__):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def avro_deserializer(serde_properties: Mapping[str, str]) -> Callable[[bytes | None], Any]:
    """A deserializer for Confluent-framed AVRO payloads (schema looked up by id), or for
    AWS Glue's when ``schema.registry.url`` is ``aws-glue://REGION``."""
    if is_glue(serde_properties):
        return glue_avro_deserializer(serde_properties)
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


# ------------------------------------------------------------------- AWS Glue Schema Registry
#: ``schema.registry.url`` of the AWS Glue Schema Registry: ``aws-glue://<region>`` (what
#: ``schemaRegistryVendor`` type ``AwsGlueSchemaRegistry`` becomes); the other settings are
#: the AWS serde's own keys, :data:`GLUE_KEYS`
GLUE_SCHEME = "aws-glue://"
#: serdeProperties read for Glue: region, endpoint (default: AWS's, or $AWS_ENDPOINT_URL_GLUE
#: / $AWS_ENDPOINT_URL as boto3 reads them), credentials (default: boto3's chain), and for
#: writing the registry and schema names (defaults: ``default-registry``, the topic)
GLUE_KEYS = ("aws.region", "aws.glue.endpoint", "aws.access.key.id", "aws.secret.access.key",
             "registry.name", "schemaName")
_GLUE_VERSION = 3  # AWS's header version byte
_GLUE_PLAIN, _GLUE_ZLIB = 0, 5  # compression byte: none, zlib
_GLUE_HEADER = 18  # version byte, compression byte, 16-byte schema version UUID


def is_glue(serde_properties: Mapping[str, str]) -> bool:
    """Whether ``serde_properties`` name the AWS Glue Schema Registry."""
    return str(serde_properties.get("schema.registry.url", "")).startswith(GLUE_SCHEME)


#: the environment boto3 reads for the endpoint and credentials: part of the client cache's
#: key, so a client is never reused for another endpoint or identity
_AWS_ENV = ("AWS_ENDPOINT_URL_GLUE", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@functools.lru_cache(maxsize=16)
def _glue_client(region: str, endpoint: str | None, access_key: str | None,
                 secret_key: str | None, _environment: tuple[str | None, ...]) -> Any:
    import boto3

    return boto3.client("glue", region_name=region, endpoint_url=endpoint or None,
                        aws_access_key_id=access_key or None,
                        aws_secret_access_key=secret_key or None)


def _glue(serde_properties: Mapping[str, str]) -> Any:
    url = str(serde_properties.get("schema.registry.url", ""))
    region = serde_properties.get("aws.region") or url.removeprefix(GLUE_SCHEME).strip("/")
    if not region:
        raise SerdeError("the AWS Glue schema registry needs a region (aws-glue://REGION)")
    return _glue_client(region, serde_properties.get("aws.glue.endpoint"),
                        serde_properties.get("aws.access.key.id"),
                        serde_properties.get("aws.secret.access.key"),
                        tuple(os.environ.get(name) for name in _AWS_ENV))


def _aws_reason(exc: Exception) -> str:
    """An AWS error's code and message (botocore's), on one line."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code')}: {error.get('Message')}"[:300]
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def glue_avro_deserializer(serde_properties: Mapping[str, str]
                           ) -> Callable[[bytes | None], Any]:
    """A deserializer for AWS Glue Schema Registry AVRO payloads: the header version byte 3,
    a compression byte (0 none, 5 zlib), the schema version's UUID (16 bytes), then the AVRO
    binary of the value. Each schema version is fetched once (``GetSchemaVersion``) and
    kept. A payload that is not that, or names a version the registry does not have, raises
    :class:`SerdeError` naming why; an unreachable registry too (with AWS's reason)."""
    import io
    import uuid
    import zlib

    import fastavro

    client = _glue(serde_properties)
    schemas: dict[uuid.UUID, Any] = {}

    def schema_of(version: uuid.UUID) -> Any:
        schema = schemas.get(version)
        if schema is None:
            try:
                found = client.get_schema_version(SchemaVersionId=str(version))
            except Exception as exc:
                raise SerdeError(f"AWS Glue schema version {version}: {_aws_reason(exc)}"
                                 ) from None
            if found.get("DataFormat") != "AVRO":
                raise SerdeError(f"AWS Glue schema version {version} is "
                                 f"{found.get('DataFormat')}, not AVRO")
            try:
                schema = fastavro.parse_schema(json.loads(found["SchemaDefinition"]))
            except Exception as exc:
                raise SerdeError(f"AWS Glue schema version {version} is not a valid AVRO "
                                 f"schema: {str(exc)[:200]}") from None
            schemas[version] = schema
        return schema

    def deserialize(data: bytes | None) -> Any:
        if data is None:
            return None
        if len(data) < _GLUE_HEADER or data[0] != _GLUE_VERSION:
            first = data[0] if data else None
            raise SerdeError(f"not AWS Glue AVRO: header version byte {first} (expected "
                             f"{_GLUE_VERSION}) in {len(data)} bytes")
        if data[1] not in (_GLUE_PLAIN, _GLUE_ZLIB):
            raise SerdeError(f"not AWS Glue AVRO: compression byte {data[1]} (expected "
                             f"{_GLUE_PLAIN} or {_GLUE_ZLIB})")
        version = uuid.UUID(bytes=bytes(data[2:_GLUE_HEADER]))
        payload = bytes(data[_GLUE_HEADER:])
        if data[1] == _GLUE_ZLIB:
            try:
                payload = zlib.decompress(payload)
            except zlib.error as exc:
                raise SerdeError(f"AWS Glue AVRO payload is not zlib data: {exc}") from None
        schema = schema_of(version)
        try:
            return fastavro.schemaless_reader(io.BytesIO(payload), schema, None)
        except Exception as exc:
            raise SerdeError(f"not AVRO of AWS Glue schema version {version}: "
                             f"{type(exc).__name__}: {str(exc)[:200]}") from None

    return deserialize


def glue_avro_serializer(serde_properties: Mapping[str, str], schema: str | None,
                         field: str, *, compress: bool = False) -> TopicSerializer:
    """A serializer ``(value, topic) -> bytes`` writing AWS Glue's wire format (see
    :func:`glue_avro_deserializer`). The schema is looked up by definition in registry
    ``registry.name`` (default ``default-registry``) under ``schemaName`` (default: the
    topic), and registered when missing (a new schema, or a new version of it), once per
    topic."""
    import io
    import uuid
    import zlib

    import fastavro

    if not schema:
        raise SerdeError(f"AVRO {field} needs {field}AvroSchema")
    try:
        parsed = fastavro.parse_schema(json.loads(schema))
    except Exception as exc:
        raise SerdeError(f"{field}AvroSchema is not a valid AVRO schema: {str(exc)[:200]}"
                         ) from None
    client = _glue(serde_properties)
    registry = serde_properties.get("registry.name") or "default-registry"
    versions: dict[str, bytes] = {}

    def version_of(topic: str) -> bytes:
        found = versions.get(topic)
        if found is not None:
            return found
        name = serde_properties.get("schemaName") or topic
        schema_id = {"RegistryName": registry, "SchemaName": name}
        try:
            try:
                vid = client.get_schema_by_definition(
                    SchemaId=schema_id, SchemaDefinition=schema)["SchemaVersionId"]
            except client.exceptions.EntityNotFoundException:
                try:
                    vid = client.register_schema_version(
                        SchemaId=schema_id, SchemaDefinition=schema)["SchemaVersionId"]
                except client.exceptions.EntityNotFoundException:
                    vid = client.create_schema(
                        RegistryId={"RegistryName": registry}, SchemaName=name,
                        DataFormat="AVRO", Compatibility="BACKWARD",
                        SchemaDefinition=schema)["SchemaVersionId"]
        except SerdeError:
            raise
        except Exception as exc:
            raise SerdeError(f"AWS Glue schema {registry}/{name}: {_aws_reason(exc)}"
                             ) from None
        header = bytes([_GLUE_VERSION, _GLUE_ZLIB if compress else _GLUE_PLAIN])
        versions[topic] = found = header + uuid.UUID(vid).bytes
        return found

    def serialize(value: Any, topic: str) -> bytes | None:
        if value is None:
            return None
        out = io.BytesIO()
        try:
            fastavro.schemaless_writer(out, parsed, value)
        except Exception as exc:
            raise SerdeError(f"{type(exc).__name__}: {str(exc)[:300]}") from None
        body = zlib.compress(out.getvalue()) if compress else out.getvalue()
        return version_of(topic) + body

    return serialize
