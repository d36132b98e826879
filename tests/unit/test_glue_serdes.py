"""AVRO through the AWS Glue Schema Registry (``schema.registry.url: aws-glue://REGION``),
against a real Glue API: moto's server on a loopback port (CreateRegistry, CreateSchema,
RegisterSchemaVersion, GetSchemaByDefinition, GetSchemaVersion)."""

from __future__ import annotations

import io
import json
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import boto3
import fastavro
import pytest

from tests.moto_server import moto_endpoint
from waxflow.connectors.avro import avro_deserializer, avro_serializer
from waxflow.connectors.serdes import SerdeError

REGION = "eu-west-1"
SCHEMA = json.dumps({"type": "record", "name": "post", "fields": [
    {"name": "name", "type": "string"}, {"name": "n", "type": "int"}]})


@pytest.fixture(scope="module")
def glue_endpoint() -> Iterator[str]:
    """A real moto server (its Glue API) on a free loopback port, stopped after the module."""
    with moto_endpoint() as endpoint:
        yield endpoint


@pytest.fixture
def glue(glue_endpoint: str) -> Any:
    return boto3.client("glue", endpoint_url=glue_endpoint, region_name=REGION,
                        aws_access_key_id="test", aws_secret_access_key="test")


@pytest.fixture
def props(glue_endpoint: str, glue: Any) -> dict[str, str]:
    registry = f"r-{uuid.uuid4().hex[:8]}"
    glue.create_registry(RegistryName=registry)
    return {"schema.registry.url": f"aws-glue://{REGION}", "aws.glue.endpoint": glue_endpoint,
            "aws.access.key.id": "test", "aws.secret.access.key": "test",
            "registry.name": registry}


def _avro(value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(SCHEMA)), value)
    return out.getvalue()


def test_a_payload_framed_by_hand_is_read_through_the_registry(glue: Any,
                                                               props: dict[str, str]) -> None:
    """AWS's wire format, written here from its description (not by our serializer): version
    byte 3, compression byte 0 or 5 (zlib), the schema version's UUID, the AVRO binary."""
    created = glue.create_schema(RegistryId={"RegistryName": props["registry.name"]},
                                 SchemaName="posts", DataFormat="AVRO",
                                 Compatibility="BACKWARD", SchemaDefinition=SCHEMA)
    version = uuid.UUID(created["SchemaVersionId"]).bytes
    read = avro_deserializer(props)
    value = {"name": "ann", "n": 7}
    assert read(bytes([3, 0]) + version + _avro(value)) == value
    assert read(bytes([3, 5]) + version + zlib.compress(_avro(value))) == value
    assert read(None) is None


def test_the_serializer_registers_once_and_writes_the_glue_header(
        glue: Any, props: dict[str, str]) -> None:
    write = avro_serializer(props, SCHEMA, "value")
    first = write({"name": "a", "n": 1}, "orders")
    second = write({"name": "b", "n": 2}, "orders")
    found = glue.get_schema_by_definition(
        SchemaId={"RegistryName": props["registry.name"], "SchemaName": "orders"},
        SchemaDefinition=SCHEMA)
    expected = bytes([3, 0]) + uuid.UUID(found["SchemaVersionId"]).bytes
    assert first is not None and second is not None
    assert first[:18] == second[:18] == expected
    assert first[18:] == _avro({"name": "a", "n": 1})
    read = avro_deserializer(props)
    assert [read(first), read(second)] == [{"name": "a", "n": 1}, {"name": "b", "n": 2}]

    # a new definition under the same schema name: a new version of it
    wider = json.dumps({"type": "record", "name": "post", "fields": [
        {"name": "name", "type": "string"}, {"name": "n", "type": "int"},
        {"name": "tag", "type": "string", "default": ""}]})
    third = avro_serializer(props, wider, "value")({"name": "c", "n": 3, "tag": "t"}, "orders")
    assert third is not None and third[2:18] != expected[2:18]
    assert read(third) == {"name": "c", "n": 3, "tag": "t"}


def test_bad_payloads_name_why(props: dict[str, str]) -> None:
    read = avro_deserializer(props)
    with pytest.raises(SerdeError, match=r"header version byte 0 \(expected 3\)"):
        read(b"\x00\x00\x00\x00\x01\x02ab")  # Confluent's framing
    with pytest.raises(SerdeError, match="compression byte 9"):
        read(bytes([3, 9]) + uuid.uuid4().bytes + b"x")
    missing = uuid.uuid4()
    with pytest.raises(SerdeError, match=rf"schema version {missing}: EntityNotFoundException"):
        read(bytes([3, 0]) + missing.bytes + b"x")


def test_the_endpoint_can_come_from_the_aws_environment(
        glue: Any, props: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """As Kestra's examples write it (a region only): boto3's own endpoint and credential
    variables point it elsewhere."""
    created = glue.create_schema(RegistryId={"RegistryName": props["registry.name"]},
                                 SchemaName="env", DataFormat="AVRO",
                                 Compatibility="NONE", SchemaDefinition=SCHEMA)
    monkeypatch.setenv("AWS_ENDPOINT_URL_GLUE", props["aws.glue.endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    read = avro_deserializer({"schema.registry.url": "aws-glue://eu-west-1"})
    payload = bytes([3, 0]) + uuid.UUID(created["SchemaVersionId"]).bytes + _avro(
        {"name": "z", "n": 0})
    assert read(payload) == {"name": "z", "n": 0}
