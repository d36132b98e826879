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

import amazon.ion.simple_types as st
from amazon.ion import simpleion


def _dict(value: Any) -> dict[str, Any]:
    return {str(k): to_python(v) for k, v in value.items()}


def _list(value: Any) -> list[Any]:
    return [to_python(v) for v in value]


# exact-type dispatch: isinstance chains over amazon.ion's ABC-based wrappers were half of
# the CPU of reading a batch back (measured by bench/profile_microbatch.py)
_CONVERT: dict[type, Any] = {
    st.IonPyNull: lambda v: None, type(None): lambda v: None,
    st.IonPyText: str, str: lambda v: v, st.IonPySymbol: str,
    st.IonPyInt: int, int: lambda v: v,
    st.IonPyBool: bool, bool: lambda v: v,
    st.IonPyFloat: float, float: lambda v: v,
    st.IonPyDecimal: float, Decimal: float,
    st.IonPyBytes: bytes, bytes: lambda v: v,
    st.IonPyTimestamp: lambda v: v.isoformat(), dt.datetime: lambda v: v.isoformat(),
    st.IonPyDict: _dict, dict: _dict, st.IonPyStdDict: _dict,
    st.IonPyList: _list, list: _list, tuple: _list,
}


def to_python(value: Any) -> Any:
    """An amazon.ion value as a plain Python value."""
    convert = _CONVERT.get(type(value))
    if convert is not None:
        return convert(value)
    if isinstance(value, Mapping):
        return _dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return _list(value)
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
