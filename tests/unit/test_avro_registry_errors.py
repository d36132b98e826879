"""An unreachable schema registry fails the Produce task as such, not as a value that "does
not fit" its schema (the value is fine; a retry may succeed once the registry is back)."""

from __future__ import annotations

import socket

import pytest

from waxflow.connectors.avro import avro_serializer
from waxflow.connectors.serdes import SerdeError
from waxflow.tasks import TaskFailure

SCHEMA = '{"type":"record","name":"p","fields":[{"name":"a","type":"string"}]}'


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_registry_is_named_as_such() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    ser = avro_serializer({"schema.registry.url": url}, SCHEMA, "value")
    with pytest.raises(TaskFailure) as info:
        ser({"a": "x"}, "topic")
    assert str(info.value).startswith(f"cannot reach the schema registry at {url}: ")
    assert not isinstance(info.value, SerdeError)
