"""File conversions between internal storage's ION and JSON or CSV (Kestra's serdes tasks).

``serdes.IonToJson``, ``serdes.JsonToIon``, ``serdes.CsvToIon`` and ``serdes.IonToCsv`` read
the file ``from`` names (an internal-storage URI such as ``{{ outputs.read.uri }}`` or
``{{ trigger.uri }}``, a ``file://`` URI or a local path) and write the converted file to
internal storage, named after the execution and the task (a retry or a replay overwrites
it). Their one output is ``uri``. They accept Kestra's full type names
(``io.kestra.plugin.serdes.json.IonToJson``, ...) and its older reader/writer names.

Guarantees:

* ION to JSON and back keeps every value JSON has (maps, lists, text, numbers, booleans,
  null). ION timestamps become ISO-8601 text with the offset they were written with, decimals
  become numbers, blobs become base64 text (JSON has no such types); ION annotations are
  dropped.
* CSV values are text (as in Kestra): a row is a map by header name (``header: true``) or a
  list of its fields. A row whose field count differs from the header's fails the task naming
  the row, unless ``onBadLines`` says WARN or SKIP.
* Every failure (missing file, a line that is not JSON, an unknown charset) fails the task
  with one line naming the file and, where there is one, the line or row.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from waxflow.connectors.storage import (
    Storage,
    StorageError,
    read_bytes,
    read_records,
)
from waxflow.expressions import tojson
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

__all__ = ["CsvToIon", "IonToCsv", "IonToJson", "JsonToIon", "execution_file_name"]


def execution_file_name(ctx: RunContext, task_id: str, suffix: str) -> str:
    """``namespace/flow/execution/task.suffix``: deterministic, so a replay overwrites."""
    flow = ctx.vars.get("flow") or {}
    execution = ctx.vars.get("execution") or {}
    exec_id = execution.get("id") if isinstance(execution, Mapping) else None
    if not exec_id:
        raise TaskFailure(f"{task_id}: no execution id in the context")
    return f"{flow.get('namespace', '')}/{flow.get('id', '')}/{exec_id}/{task_id}.{suffix}"


class _Convert(TaskBase):
    """What the conversions share: ``from``, ``charset``, the ``uri`` output."""

    BLOCKING: ClassVar[bool] = True  # file I/O, possibly S3
    from_: str = Field(alias="from", description="the file to convert (rendered): an "
                                                 "internal-storage URI, a file:// URI or a path")
    charset: str = Field(default="UTF-8", description="the text file's character set")

    @field_validator("charset")
    @classmethod
    def _known_charset(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown charset {value!r} (e.g. UTF-8, ISO-8859-1)") from None
        return value

    def _source(self, ctx: RunContext) -> str:
        source = ctx.render(self.from_)
        if not isinstance(source, str) or not source.strip():
            raise TaskFailure(f"`from` must render to a file URI, got {source!r:.80}")
        return source.strip()

    def _read_text(self, source: str) -> str:
        try:
            data = read_bytes(source)
        except StorageError as exc:
            raise TaskFailure(f"`from`: {exc}") from None
        except OSError as exc:
            raise TaskFailure(f"`from` file {source} cannot be read: {exc}") from None
        try:
            return data.decode(self.charset)
        except UnicodeDecodeError as exc:
            raise TaskFailure(f"`from` file {source} is not {self.charset} text ({exc.reason} "
                              f"at byte {exc.start})") from None

    def _records(self, source: str) -> Iterator[Any]:
        try:
            yield from read_records(source)
        except StorageError as exc:
            raise TaskFailure(f"`from`: {exc}") from None
        except Exception as exc:  # a file that is not ION
            raise TaskFailure(f"`from` file {source} is not an ION file: "
                              f"{type(exc).__name__}: {str(exc)[:200]}") from None

    def _store(self, ctx: RunContext, suffix: str, text: str) -> dict[str, Any]:
        try:
            data = text.encode(self.charset)
        except UnicodeEncodeError as exc:
            raise TaskFailure(f"the output has characters {self.charset} cannot hold "
                              f"({exc.object[exc.start:exc.end]!r})") from None
        try:
            return {"uri": Storage().put_data(execution_file_name(ctx, self.id, suffix), data)}
        except StorageError as exc:
            raise TaskFailure(str(exc)) from None

    def _store_ion(self, ctx: RunContext, values: list[Any]) -> dict[str, Any]:
        try:
            uri, _ = Storage().put_records(execution_file_name(ctx, self.id, "ion"), values)
        except StorageError as exc:
            raise TaskFailure(str(exc)) from None
        return {"uri": uri}


@task_type("serdes.IonToJson", aliases=("io.kestra.plugin.serdes.json.IonToJson",
                                        "io.kestra.plugin.serdes.json.JsonWriter"))
class IonToJson(_Convert):
    """Convert an ION file (a batch of records, a Consume's output) to JSON: one value per
    line (``newLine: true``, JSON Lines) or one JSON array. Outputs ``uri`` (``.jsonl`` or
    ``.json``)."""

    type: Literal["serdes.IonToJson"] = Field(description="the task type")
    newLine: bool = Field(default=True, description="true: one JSON value per line (JSON "
                                                    "Lines); false: one JSON array")
    timeZoneId: str | None = Field(
        default=None, description="accepted for Kestra compatibility: ION timestamps keep the "
                                  "offset they were written with")
    shouldKeepAnnotations: Literal[False] = Field(
        default=False, description="ION annotations are not kept (false is the only value)")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        source = self._source(ctx)
        values = list(self._records(source))
        try:
            text = "".join(tojson(v) + "\n" for v in values) if self.newLine \
                else tojson(values)
        except (TypeError, ValueError) as exc:
            raise TaskFailure(f"a value of {source} has no JSON form: {exc}") from None
        return self._store(ctx, "jsonl" if self.newLine else "json", text)


@task_type("serdes.JsonToIon", aliases=("io.kestra.plugin.serdes.json.JsonToIon",
                                        "io.kestra.plugin.serdes.json.JsonReader"))
class JsonToIon(_Convert):
    """Convert a JSON file to ION: one value per line (``newLine: true``, JSON Lines) or one
    JSON document (an array gives one ION value per item). Outputs ``uri``."""

    type: Literal["serdes.JsonToIon"] = Field(description="the task type")
    newLine: bool = Field(default=True, description="true: the file holds one JSON value per "
                                                    "line; false: one JSON document")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        source = self._source(ctx)
        text = self._read_text(source)
        values: list[Any] = []
        if self.newLine:
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    values.append(json.loads(line))
                except ValueError as exc:
                    raise TaskFailure(f"line {number} of {source} is not JSON: {exc}"
                                      ) from None
        else:
            try:
                doc = json.loads(text)
            except ValueError as exc:
                raise TaskFailure(f"{source} is not a JSON document: {exc}") from None
            values = list(doc) if isinstance(doc, list) else [doc]
        return self._store_ion(ctx, values)


class _Csv(_Convert):
    """CSV dialect settings (Kestra's names)."""

    header: bool = Field(default=True, description="the first row names the columns")
    fieldSeparator: str = Field(default=",", min_length=1, max_length=1,
                                description="the field separator (one character)")
    textDelimiter: str = Field(default='"', min_length=1, max_length=1,
                               description="the quote character (one character)")


@task_type("serdes.CsvToIon", aliases=("io.kestra.plugin.serdes.csv.CsvToIon",
                                       "io.kestra.plugin.serdes.csv.CsvReader"))
class CsvToIon(_Csv):
    """Convert a CSV file to ION: one map per row (``header: true``, keyed by the header's
    names) or one list of fields per row. Values are text. Outputs ``uri``."""

    type: Literal["serdes.CsvToIon"] = Field(description="the task type")
    skipRows: int = Field(default=0, ge=0, description="rows to skip before the header")
    skipEmptyRows: bool = Field(default=False, description="leave out rows with no field")
    onBadLines: Literal["ERROR", "WARN", "SKIP"] = Field(
        default="ERROR", description="a row whose field count differs from the header's: "
                                     "fail the task (ERROR), or leave it out with (WARN) or "
                                     "without (SKIP) a log line")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        source = self._source(ctx)
        text = self._read_text(source).removeprefix("\ufeff")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.fieldSeparator,
                            quotechar=self.textDelimiter)
        names: list[str] | None = None
        values: list[Any] = []
        try:
            for number, row in enumerate(reader, start=1):
                if number <= self.skipRows:
                    continue
                if not row and (self.skipEmptyRows or names is None):
                    continue
                if self.header and names is None:
                    names = row
                    continue
                if names is not None and len(row) != len(names):
                    message = (f"row {number} of {source} has {len(row)} fields, the header "
                               f"{len(names)}")
                    if self.onBadLines == "ERROR":
                        raise TaskFailure(message)
                    if self.onBadLines == "WARN":
                        ctx.log("WARN", message + ": left out")
                    continue
                values.append(dict(zip(names, row, strict=True)) if names is not None
                              else row)
        except csv.Error as exc:
            raise TaskFailure(f"{source} is not valid CSV (row {reader.line_num}): {exc}"
                              ) from None
        return self._store_ion(ctx, values)


@task_type("serdes.IonToCsv", aliases=("io.kestra.plugin.serdes.csv.IonToCsv",
                                       "io.kestra.plugin.serdes.csv.CsvWriter"))
class IonToCsv(_Csv):
    """Convert an ION file to CSV. Maps become rows under a header of every key seen (in
    order of first appearance); lists are written as rows as they are; nested values are
    written as JSON text. Outputs ``uri``."""

    type: Literal["serdes.IonToCsv"] = Field(description="the task type")
    lineDelimiter: str | None = Field(default=None, min_length=1,
                                      description="ends each row (default: a line feed)")
    alwaysDelimitText: bool = Field(default=False,
                                    description="quote every field, not only those that "
                                                "need it")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        source = self._source(ctx)
        values = list(self._records(source))
        columns = list(dict.fromkeys(k for v in values if isinstance(v, dict) for k in v))
        out = io.StringIO()
        writer = csv.writer(out, delimiter=self.fieldSeparator, quotechar=self.textDelimiter,
                            lineterminator=self.lineDelimiter or "\n",
                            quoting=csv.QUOTE_ALL if self.alwaysDelimitText
                            else csv.QUOTE_MINIMAL)
        if self.header and columns:
            writer.writerow(columns)
        for value in values:
            if isinstance(value, dict):
                writer.writerow([_cell(value.get(c)) for c in columns])
            elif isinstance(value, list):
                writer.writerow([_cell(v) for v in value])
            else:
                writer.writerow([_cell(value)])
        return self._store(ctx, "csv", out.getvalue())


def _cell(value: Any) -> str:
    """A CSV field: text as is, null empty, booleans ``true``/``false``, nested values JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return tojson(value)
    return str(value)
