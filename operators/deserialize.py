"""Deserialize step: raw Kafka records → decoded records, applying ``onSerdeError`` (G5).

A record whose key or value does not deserialize is never dropped silently: with SKIPPED or
DLQ it goes on as a :class:`Decoded` with ``error`` set (the execute step records a SKIPPED
execution and, for DLQ, sends it to the DLQ topic); with FAIL the step raises
:class:`SerdeStop` naming topic/partition/offset, which stops the job before that epoch (and
so that record) is committed. Any exception a deserializer raises counts (``RecursionError``,
``MemoryError``, an AVRO or ION decoder's own errors...): it is that record's serde error,
never a crash of the step. Records not matching ``headerFilters`` are marked ``filtered``: no
execution, but their offsets advance.
"""

from __future__ import annotations

from collections.abc import Mapping

import bytewax.operators as op
from bytewax.dataflow import Stream

from waxflow.connectors.serdes import Deserializer, failure
from waxflow.errors import SerdeStop
from waxflow.records import Decoded, RawRecord, headers_text


def _headers_match(raw: RawRecord, filters: Mapping[str, str]) -> bool:
    have = headers_text(raw.headers)
    return all(have.get(k) == v for k, v in filters.items())


def decode(raw: RawRecord, key_de: Deserializer, value_de: Deserializer, *, fail: bool,
           filters: Mapping[str, str]) -> Decoded:
    """Decode one record; raises SerdeStop only when ``fail`` (onSerdeError FAIL)."""
    if filters and not _headers_match(raw, filters):
        return Decoded(raw, filtered=True)
    part = "key"
    try:
        key = key_de(raw.key)
        part = "value"
        value = value_de(raw.value)
    except Exception as exc:  # SerdeError, or anything a decoder raised (module doc)
        where = f"{raw.topic}/{raw.partition}@{raw.offset}"
        message = f"cannot deserialize the {part} of record {where}: {failure(exc)}"
        if fail:
            raise SerdeStop(f"{message} (onSerdeError FAIL: stopped without committing it)"
                            ) from None
        return Decoded(raw, error=message)
    return Decoded(raw, key, value)


def deserialize(step_id: str, up: Stream[RawRecord], *, key_de: Deserializer,
                value_de: Deserializer, on_error: str,
                header_filters: Mapping[str, str]) -> Stream[Decoded]:
    """Decode each record of ``up`` (stateless: items stay on their worker)."""
    fail = on_error == "FAIL"
    filters = dict(header_filters)

    def batch(raws: list[RawRecord]) -> list[Decoded]:
        if filters:
            return [decode(r, key_de, value_de, fail=fail, filters=filters) for r in raws]
        # one tight loop over the batch; a record that fails is decoded again by decode(),
        # which words its error (deserializers are pure: the same failure again)
        out: list[Decoded] = []
        append = out.append
        for r in raws:
            try:
                append(Decoded(r, key_de(r.key), value_de(r.value)))
            except Exception:  # that record's serde error (module doc)
                append(decode(r, key_de, value_de, fail=fail, filters=filters))
        return out

    return op.flat_map_batch(step_id, up, batch)
