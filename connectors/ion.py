"""Amazon ION encoding (binary) to and from plain Python values.

Internal-storage batch files and the ION serde use it. Decoding returns plain dict/list/
str/int/float/bool/None/bytes (not amazon.ion's IonPy wrappers), so values compare and
serialise like JSON-decoded ones; timestamps become ISO-8601 strings, decimals floats.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import IO, Any

from amazon.ion import simpleion
from amazon.ion.core import IonType
from amazon.ion.simple_types import IonPyNull


def to_python(value: Any) -> Any:
    """An amazon.ion value as a plain Python value."""
    if value is None or isinstance(value, IonPyNull):
        return None
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, Mapping):
        return {str(k): to_python(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [to_python(v) for v in value]
    if isinstance(value, bool) or getattr(value, "ion_type", None) == IonType.BOOL:
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def ion_dumps(value: Any) -> bytes:
    """One value as binary ION."""
    out: bytes = simpleion.dumps(value, binary=True)
    return out


def ion_loads(data: bytes) -> Any:
    """One binary (or text) ION value as a plain Python value."""
    return to_python(simpleion.loads(data))


def write_stream(fp: IO[bytes], values: Iterable[Any]) -> int:
    """Write values as one ION stream (a sequence of top-level values); return the count."""
    items = list(values)
    fp.write(simpleion.dumps(items, binary=True, sequence_as_stream=True))
    return len(items)


def read_stream(fp: IO[bytes]) -> Iterator[Any]:
    """The top-level values of an ION stream, as plain Python values."""
    for value in simpleion.load(fp, single_value=False, parse_eagerly=False):
        yield to_python(value)
