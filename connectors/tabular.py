"""Batch files as tables: ION → Arrow → Parquet / NDJSON, for warehouse loaders.

``rows(records)`` shapes each Kafka record into one row: the fields of its value when the
value is a map (else a ``value`` column), plus ``_topic``, ``_partition``, ``_offset``,
``_timestamp`` and ``_key`` so loads can deduplicate or MERGE on the record's coordinates.
Column types are inferred by pyarrow from the values of all rows (``schema`` overrides); a
field missing from a record is null in its row; the ``_`` columns come after the value's.
Batches stored by ``waxflow.connectors.jsonbatch`` become tables without decoding records in Python
(the table kept by the process that stored the batch, else one pyarrow parse of the file).

**Records that do not fit** (:func:`split_table`, used by the loaders): a batch is one table,
so a record that cannot be a row of it is *rejected* instead of failing the whole batch:

* when most of the batch's non-null values are JSON objects (ties included) the table is
  built from their fields, and a value that is not an object (``[1,2]``, ``"text"``, ``42``)
  is rejected; otherwise the values are one ``value`` column, and objects are rejected;
* a field (or the ``value`` column) whose values cannot share one Arrow type: the type of
  most records wins (ties: the earliest record's), the records whose value does not fit it
  are rejected (a string among integers, an integer beyond int64, ...).

Null values (tombstones) are rows as before. A batch of JSON objects stored in bulk passed
one ``pyarrow.json`` parse into one table, so it has no such record and pays nothing for
the check; only batches decoded record by record are looked at, in the loop that builds
their rows. :func:`write_rejects` stores rejected records next to the batch file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from waxflow.connectors import jsonbatch
from waxflow.connectors.jsonbatch import META_COLUMNS
from waxflow.connectors.storage import (
    ION_BVM,
    Storage,
    StorageError,
    parse_records,
    read_bytes,
    read_records,
    recalled,
    stored_path,
)
from waxflow.tasks import RunContext, TaskFailure

__all__ = ["META_COLUMNS", "OnReject", "Reject", "Split", "on_reject_doc", "rejects_uri",
           "rows", "settle_rejects", "split_rows", "split_table", "to_ndjson", "to_parquet",
           "to_table", "write_rejects"]

#: what a loader does with records that do not fit its table (the ``onReject`` property)
OnReject = Literal["REJECTS_FILE", "FAIL"]


def on_reject_doc(*, more: str = "", table: str = "the table", load: str = "load",
                  source: str = "the batch file") -> str:
    """The description of a task's ``onReject`` property; ``more``: what else the task
    sets aside."""
    return (
        f"records that do not fit {table}: a value that is not a JSON object when most of "
        "the batch's values are (the table is built from their fields), or a field whose "
        "type is not the one most records give it (a string among integers, an integer "
        f"beyond 64 bits){more}. `REJECTS_FILE` (default) {load}s the other records and "
        "stores the rejected ones, each with its `topic`, `partition`, `offset`, `key`, "
        f"`value` and a `reason`, as an ION file next to {source} "
        "(`<batch>.<taskId>.rejects.ion`; outputs `rejected` and `rejectsUri`; the execution "
        f"stays SUCCESS, the count is logged as a warning). `FAIL` fails the task before "
        f"anything is {load}ed (the rejects file is still written and named in the error), "
        "so the execution fails (with the trigger's `onFailure: STOP` the batch is not "
        "committed). A batch of JSON objects stored in bulk has no such records and is not "
        "checked record by record")


#: what pyarrow raises for values that cannot be one column (OverflowError: int beyond int64)
_MISFIT = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError)


def rows(records: Iterable[dict[str, Any]], metadata: bool = True) -> Iterator[dict[str, Any]]:
    """One row per record (see module doc)."""
    for rec in records:
        yield _row(rec, metadata)


def _row(rec: Mapping[str, Any], metadata: bool) -> dict[str, Any]:
    value = rec.get("value")
    row = dict(value) if isinstance(value, dict) else {"value": value}
    if metadata:
        key = rec.get("key")
        row.update({"_topic": rec.get("topic"), "_partition": rec.get("partition"),
                    "_offset": rec.get("offset"), "_timestamp": rec.get("timestamp"),
                    "_key": key if isinstance(key, str | None) else json.dumps(key)})
    return row


def _load(uri: str, metadata: bool, schema: pa.Schema | None = None
          ) -> tuple[pa.Table | None, list[dict[str, Any]] | None]:
    """(the batch's rows table, None) when it needs no per-record decode (kept, or one
    pyarrow parse of a bulk-stored file), else (None, its records)."""
    path = stored_path(uri)
    records, table = (None, None) if path is None else recalled(path)
    if table is not None and schema is None:
        return (table if metadata else table.drop_columns(list(META_COLUMNS))), None
    if records is None:
        data = read_bytes(uri)
        if schema is None and data and not data.startswith(ION_BVM):
            table = jsonbatch.read_table(data, metadata)
            if table is not None:
                return table, None
        records = parse_records(data)
    return None, records


def _meta_last(table: pa.Table, metadata: bool) -> pa.Table:
    """The ``_`` columns last, also when a later record brings new value fields."""
    if not metadata:
        return table
    return table.select([n for n in table.column_names if n not in META_COLUMNS]
                        + list(META_COLUMNS))


def to_table(uri: str, metadata: bool = True, schema: pa.Schema | None = None) -> pa.Table:
    """The batch file at ``uri`` as an Arrow table (the file is read, or downloaded, once);
    raises when a record does not fit (see :func:`split_table` to set those aside)."""
    table, records = _load(uri, metadata, schema)
    if table is not None:
        return table
    items = list(rows(records or [], metadata))
    if not items:
        return pa.Table.from_pylist([], schema=schema) if schema is not None else pa.table({})
    if schema is not None:
        return pa.Table.from_pylist(items, schema=schema)
    return _meta_last(pa.Table.from_struct_array(pa.array(items)), metadata)


@dataclass(frozen=True)
class Reject:
    """A record left out of the table: its position in the batch file and why."""

    position: int
    reason: str


@dataclass
class Split:
    """A batch as the table of the records that fit plus the records that do not.

    ``positions[i]`` is the batch-file position of table row ``i`` (None: row ``i`` is
    record ``i``, nothing was left out); ``records`` are the decoded records when the batch
    was decoded record by record (else read again, only if there are rejects)."""

    table: pa.Table
    rejects: list[Reject] = field(default_factory=list)
    positions: list[int] | None = None
    records: list[dict[str, Any]] | None = None

    @property
    def total(self) -> int:
        """Records in the batch."""
        return int(self.table.num_rows) + len(self.rejects)

    def position(self, row: int) -> int:
        return row if self.positions is None else self.positions[row]

    def drop(self, reasons: Mapping[int, str]) -> Split:
        """This split without the table rows in ``reasons`` (row → why), now rejects."""
        if not reasons:
            return self
        keep = [i for i in range(self.table.num_rows) if i not in reasons]
        rejects = self.rejects + [Reject(self.position(i), why)
                                  for i, why in sorted(reasons.items())]
        table = self.table.take(pa.array(keep, type=pa.int64()))
        return Split(table, sorted(rejects, key=lambda r: r.position),
                     [self.position(i) for i in keep], self.records)

    def rejected_records(self, uri: str) -> list[dict[str, Any]]:
        """The rejected records of the batch file at ``uri`` (this split's source), each
        with a ``reason``, in batch order."""
        if not self.rejects:
            return []
        records = self.records
        if records is None:
            wanted = {r.position for r in self.rejects}
            records = [rec if i in wanted else {} for i, rec in enumerate(read_records(uri))]
        return [{**records[r.position], "reason": r.reason} for r in self.rejects]


def _kind(value: Any) -> str:
    """A value's JSON kind, for messages."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _misfits(name: str, values: list[Any]) -> dict[int, str]:
    """Rows of one column whose value does not fit the type of most of its values."""
    bad: dict[int, str] = {}
    groups: dict[str, list[int]] = {}  # Arrow type of the value alone → rows, in first-seen order
    for i, value in enumerate(values):
        if value is None:
            continue
        try:
            typ = pa.array([value]).type
        except _MISFIT as exc:
            what = ("an integer beyond 64 bits" if isinstance(exc, OverflowError)
                    else f"a {_kind(value)} that has no column type")
            bad[i] = f"field {name!r}: {what}"
            continue
        groups.setdefault(str(typ), []).append(i)
    order = sorted(groups, key=lambda t: (-len(groups[t]), groups[t][0]))
    samples: list[Any] = []  # one value of each type kept: the kept types must unify
    target: pa.DataType | None = None
    for typ in order:
        sample = values[groups[typ][0]]
        try:
            target = pa.array([*samples, sample]).type
        except _MISFIT:
            continue
        samples.append(sample)
        groups.pop(typ)
    for members in groups.values():
        for i in members:
            bad[i] = (f"field {name!r}: {_kind(values[i])} does not fit the column's type "
                      f"{target} (from the batch's other records)")
    return bad


def _column_misfits(items: list[dict[str, Any]]) -> dict[int, str]:
    """Rows whose value, in some column, does not fit the type of most of that column."""
    names: dict[str, None] = {}
    for row in items:
        names.update(dict.fromkeys(row))
    bad: dict[int, str] = {}
    for name in names:
        values = [row.get(name) for row in items]
        try:
            pa.array(values)
        except _MISFIT:
            for i, why in _misfits(name, values).items():
                bad.setdefault(i, why)
    return bad


def split_rows(records: list[dict[str, Any]], metadata: bool = True) -> Split:
    """The records as a :class:`Split` (see the module doc for what does not fit)."""
    items: list[dict[str, Any]] = []
    others: list[int] = []  # positions of non-null values that are not objects
    for i, rec in enumerate(records):
        value = rec.get("value")
        if value is not None and not isinstance(value, dict):
            others.append(i)
        items.append(_row(rec, metadata))
    rejects: list[Reject] = []
    positions: list[int] | None = None
    if others:  # else every value is an object or null: nothing to look at
        objects = [i for i, rec in enumerate(records) if isinstance(rec.get("value"), dict)]
        if len(objects) >= len(others):
            left_out = others
            why = "value is a JSON {}, not an object (the table is built from the fields " \
                  "of the batch's objects)"
        else:
            left_out = objects
            why = "value is a JSON {}, but most of the batch's values are not objects (the " \
                  "table has one `value` column)"
        rejects = [Reject(i, why.format(_kind(records[i]["value"]))) for i in left_out]
        out = set(left_out)
        positions = [i for i in range(len(records)) if i not in out]
        items = [items[i] for i in positions]
    if not items:
        return Split(pa.table({}), rejects, positions, records)
    try:
        table = pa.Table.from_struct_array(pa.array(items))
    except _MISFIT:
        bad = _column_misfits(items)
        if not bad:
            raise
        kept = [i for i in range(len(items)) if i not in bad]
        at = positions if positions is not None else list(range(len(records)))
        rejects = sorted(rejects + [Reject(at[i], why) for i, why in bad.items()],
                         key=lambda r: r.position)
        positions = [at[i] for i in kept]
        items = [items[i] for i in kept]
        table = pa.Table.from_struct_array(pa.array(items)) if items else pa.table({})
    return Split(_meta_last(table, metadata) if table.num_columns else table, rejects,
                 positions, records)


def split_table(uri: str, metadata: bool = True) -> Split:
    """The batch file at ``uri`` as the table of the records that fit plus the rejected
    ones (see the module doc). A bulk-stored batch is one table already: nothing is
    checked per record."""
    table, records = _load(uri, metadata)
    if table is not None:
        return Split(table)
    return split_rows(records or [], metadata)


def rejects_uri(uri: str, suffix: str) -> str:
    """Where the rejects of the batch file ``uri`` go: next to it, named
    ``<batch name without .ion>.<suffix>.rejects.ion``."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        base, _, name = uri.rpartition("/")
    else:
        path = Path(parsed.path if parsed.scheme else uri).resolve()
        base, name = path.parent.as_uri(), path.name
    return f"{base}/{name.removesuffix('.ion')}.{suffix}.rejects.ion"


def write_rejects(uri: str, entries: list[dict[str, Any]]) -> str:
    """Store ``entries`` as one binary ION file at ``uri`` (a file or ``s3://`` URI, as
    :func:`rejects_uri` gives; a replay overwrites it); return the URI."""
    base, _, name = uri.rpartition("/")
    if urlparse(base).scheme == "file":
        base = urlparse(base).path  # as ``local_path`` reads a file URI
    return Storage(base).put_records(name, entries)[0]


def to_parquet(uri: str, dest: Path, metadata: bool = True) -> Path:
    """Write the batch file as Parquet at ``dest``; returns ``dest``."""
    pq.write_table(to_table(uri, metadata), dest)
    return dest


def to_ndjson(uri: str, dest: Path, metadata: bool = True) -> Path:
    """Write the batch file as newline-delimited JSON at ``dest``; returns ``dest``."""
    with dest.open("w", encoding="utf-8") as fp:
        for row in rows(read_records(uri), metadata):
            fp.write(json.dumps(row, ensure_ascii=False, default=str))
            fp.write("\n")
    return dest


def settle_rejects(ctx: RunContext, split: Split, *, who: str, uri: str, task_id: str,
                   on_reject: OnReject, source: str | None = None) -> dict[str, Any]:
    """Store ``split``'s rejects next to the batch file ``uri`` (read from ``source``, a
    local copy, when given) and return the ``rejected`` and ``rejectsUri`` outputs; with
    ``on_reject`` ``FAIL`` raise a :class:`TaskFailure` naming them instead. Nothing is
    written when every record fits."""
    out: dict[str, Any] = {"rejected": len(split.rejects), "rejectsUri": None}
    if not split.rejects:
        return out
    target = rejects_uri(uri, task_id)
    try:
        entries = split.rejected_records(source or uri)
        out["rejectsUri"] = write_rejects(target, entries)
    except (StorageError, OSError) as exc:
        raise TaskFailure(f"{who}: cannot store the records that do not fit at {target}: "
                          f"{exc}") from None
    first = "; ".join(f"{e.get('topic')}/{e.get('partition')}@{e.get('offset')}: "
                      f"{e['reason']}" for e in entries[:3])
    more = "; ..." if len(entries) > 3 else ""
    text = (f"{len(entries)} of {split.total} records do not fit the table ({first}{more}); "
            f"they are stored in {out['rejectsUri']}")
    if on_reject == "FAIL":
        raise TaskFailure(f"{who}: {text}; onReject is FAIL: nothing was loaded")
    ctx.log("WARN", f"{text}; loading the other {split.table.num_rows}")
    return out
