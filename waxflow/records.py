"""A Kafka record as waxflow carries it: the raw fields, the decoded form, header helpers.

Plain data, shared by the sources (which build them), the operators (which decode and run
them) and the history (which names them): no Kafka client is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class RawRecord:
    """A record as read from Kafka, before deserialization (treat as immutable: not frozen
    because a frozen dataclass costs 5x as much to build, per record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None
    headers: tuple[tuple[str, bytes | None], ...]
    delivery_count: int | None = None  # share groups: how often the broker delivered it
    origin: int | None = None  # share groups: id of the source partition that holds its ack

    @property
    def part_key(self) -> str:
        return f"{self.partition}-{self.topic}"


HeaderPairs = tuple[tuple[str, bytes | None], ...]

#: ``(topic, partition, offset, key, value, timestamp, headers)``: a ``RawRecord``'s fields
#: (``RawRecord(*fields)``) as a plain tuple, cheaper to build, and left alone by the garbage
#: collector once it has seen it (a batch holds hundreds of thousands)
RecordFields = tuple[str, int, int, bytes | None, bytes | None, int | None, HeaderPairs]


def headers_text(headers: HeaderPairs) -> dict[str, str | None]:
    """Header pairs as a name → text map (later duplicates win; invalid UTF-8 replaced)."""
    if not headers:
        return {}
    return {k: (v.decode("utf-8", "replace") if v is not None else None) for k, v in headers}


def dlq_headers(topic: str, partition: int, offset: int, error: str,
                *, original: HeaderPairs = ()) -> list[tuple[str, str | bytes | None]]:
    """Headers of a dead-lettered record: its own, plus where it came from and why (G5)."""
    return [*((k, v) for k, v in original if v is not None),
            ("waxflow.source.topic", topic.encode()),
            ("waxflow.source.partition", str(partition).encode()),
            ("waxflow.source.offset", str(offset).encode()),
            ("waxflow.error", error.encode())]


@dataclass(slots=True)
class Decoded:
    """A record after the deserialize step: its key and value, or the serde ``error`` that
    ``onSerdeError`` handles; ``filtered`` when ``headerFilters`` excluded it (no execution,
    the offset still advances)."""

    raw: RawRecord
    key: Any = None
    value: Any = None
    error: str | None = None
    filtered: bool = False
