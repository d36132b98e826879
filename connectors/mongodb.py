"""MongoDB tasks (Kestra's ``io.kestra.plugin.mongodb`` plugin), through ``pymongo``: any
server speaking MongoDB's wire protocol (MongoDB, FerretDB, ...).

``mongodb.InsertOne`` inserts ``document`` (a map, or Extended-JSON text such as
``{"_id": {"$oid": "..."}}`` — Kestra's "BSON string") into ``database.collection`` and
outputs ``insertedId`` (text) and ``wasAcknowledged``. ``mongodb.Find`` reads the documents
matching ``filter`` (``projection``, ``sort``, ``skip``, ``limit``) and outputs ``rows`` and
``size``, or with ``store: true`` an ION file (``uri``) and ``size``. ``mongodb.Update``
updates (``UPDATE_ONE``, ``UPDATE_MANY``) or replaces (``REPLACE_ONE``) the documents
matching ``filter``, ``mongodb.Delete`` deletes them (``DELETE_ONE``, ``DELETE_MANY``), and
``mongodb.Bulk`` runs the operations of a file (``from``, one ``bulkWrite`` operation per
record: ``insertOne``, ``updateOne``, ``updateMany``, ``replaceOne``, ``deleteOne``,
``deleteMany``), ``mongodb.Load`` inserts every record of a file (``idKey``, ``removeIdKey``)
and ``mongodb.Aggregate`` runs an aggregation ``pipeline`` (``rows``, or ``store: STORE``),
with Kestra's properties and outputs.

Guarantees:

* **Replays insert nothing twice (G2).** A document without ``_id`` gets one derived from
  the execution id, the task id and the iteration value (``taskrun.value``): an ObjectId
  whose first 4 bytes are the trigger record's timestamp in seconds when there is one (as
  a server-made ObjectId's are its insertion time), the rest a hash. A replayed record, a
  retried attempt or a share-group redelivery inserts the same ``_id``; the server refuses
  the duplicate and the task succeeds with that ``_id`` (``alreadyInserted: true``). A
  document that brings its own ``_id`` succeeds the same way when the stored document is
  equal to it; a different stored document fails the task naming the ``_id``. Set
  ``idempotent: false`` for Kestra's behaviour (the server or driver makes the ``_id``: a
  replay inserts again).
* **Updates and deletes are run again by a replay**, and what that does is theirs: a
  ``$set``, a replacement, a delete by ``_id`` change nothing the second time; ``$inc``,
  ``$push`` apply twice (each task's doc says which, and how to guard them). ``mongodb.Bulk``
  and ``mongodb.Load`` insert idempotently as ``InsertOne`` does (the ``_id`` also derives
  from the record's index) and skip what a previous attempt inserted.
* The connection string is rendered (``{{ secret('MONGO_URI') }}``) and never written in
  an error or a log line: errors name the server's hosts only. One client (connection
  pool) per connection string and process, shared by every execution.
* Every failure (server unreachable, authentication, a document that is not a map or not
  Extended JSON) fails the task with one line.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from waxflow.connectors.serdes_tasks import execution_file_name
from waxflow.connectors.storage import Storage, StorageError, read_records
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

__all__ = ["Aggregate", "Bulk", "Delete", "Find", "InsertOne", "Load", "MongoDbConnection",
           "Update", "derived_id"]

#: how long a task waits for a server it cannot reach (pymongo's default is 30 s)
SERVER_SELECTION_MS = 10_000


class MongoDbConnection(BaseModel):
    """Kestra's ``connection``: the server's connection string."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    uri: str = Field(min_length=1,
                     description="the connection string, e.g. `mongodb://user:pass@host:27017/"
                                 "?authSource=admin` (rendered: `{{ secret('MONGO_URI') }}`)")


@functools.lru_cache(maxsize=16)
def _client(uri: str) -> Any:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(
        uri, serverSelectionTimeoutMS=SERVER_SELECTION_MS, appname="waxflow", tz_aware=True)
    atexit.register(client.close)  # pooled for the process's life, closed at its end
    return client


def _hosts(uri: str) -> str:
    """The hosts of a connection string, without credentials or options."""
    try:
        from pymongo.uri_parser import parse_uri

        return ",".join(f"{h}:{p}" for h, p in parse_uri(uri, warn=True)["nodelist"])
    except Exception:
        return "the server"


def _reason(exc: BaseException, uri: str) -> str:
    """pymongo's reason on one line, the connection string's credentials kept out."""
    text = " ".join(str(exc).split())
    if uri and uri in text:
        text = text.replace(uri, _hosts(uri))
    head, _, _ = text.partition(", full error:")
    return f"{type(exc).__name__}: {head[:300]}"


def _document(value: Any, what: str) -> dict[str, Any]:
    """A rendered map or Extended-JSON text as a BSON-ready dict (``$oid``, ``$date``...)."""
    from bson import json_util

    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        if isinstance(value, str):
            doc = json_util.loads(value)
        elif isinstance(value, Mapping):  # datetimes stay dates, bytes binary
            doc = json_util.loads(json_util.dumps(value, default=str))
        else:
            raise TaskFailure(f"`{what}` must be a map or JSON text, got "
                              f"{type(value).__name__}")
    except TaskFailure:
        raise
    except Exception as exc:
        raise TaskFailure(f"`{what}` is not (Extended) JSON: {' '.join(str(exc).split())[:200]}"
                          ) from None
    if not isinstance(doc, dict):
        raise TaskFailure(f"`{what}` must be a document (a map), got {type(doc).__name__}")
    return doc


def derived_id(ctx: RunContext, task_id: str, part: int | None = None) -> Any:
    """The ``_id`` of an idempotent insert: an ObjectId from the execution id, the task id,
    the iteration value and ``part`` (a ``mongodb.Bulk`` record's index); its first 4 bytes
    the trigger record's timestamp (seconds) when there is one."""
    from bson import ObjectId

    execution = ctx.vars.get("execution") or {}
    taskrun = ctx.vars.get("taskrun") or {}
    trigger = ctx.vars.get("trigger") or {}
    exec_id = execution.get("id") if isinstance(execution, Mapping) else None
    if not exec_id:
        raise TaskFailure(f"{task_id}: no execution id in the context")
    value = taskrun.get("value") if isinstance(taskrun, Mapping) else None
    key: list[Any] = [str(exec_id), task_id, value] + ([part] if part is not None else [])
    digest = hashlib.sha256(json.dumps(key, default=str).encode()).digest()
    stamp = trigger.get("timestamp") if isinstance(trigger, Mapping) else None
    if isinstance(stamp, int | float) and not isinstance(stamp, bool) and stamp > 0:
        head = (int(stamp) // 1000 & 0xFFFFFFFF).to_bytes(4, "big")
        return ObjectId(head + digest[:8])
    return ObjectId(digest[:12])


def _plain(value: Any) -> Any:
    """A BSON value as JSON-like Python (ObjectId as text, the rest as pymongo gives it)."""
    from bson import ObjectId

    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _inserted_before(coll: Any, ops: list[tuple[str, dict[str, Any], bool, Any]], *,
                     uri: str) -> set[int]:
    """After one insert of a replay was found already there: the positions among the
    inserts leading ``ops`` whose documents a previous attempt inserted too (a derived
    ``_id`` stored, or an own ``_id`` stored with an equal document), found with one query,
    so a replay of N inserts costs a request or two, not N. The look-ahead stops at the first
    other operation: an update or delete before an insert must run first."""
    from bson import json_util
    from pymongo.errors import PyMongoError

    lead = []
    for name, doc, own_id, _ in ops:
        if name != "insertOne" or "_id" not in doc:
            break
        lead.append((doc, own_id))
    if not lead:
        return set()
    try:
        stored = {json_util.dumps(d["_id"]): d
                  for d in coll.find({"_id": {"$in": [doc["_id"] for doc, _ in lead]}})}
    except PyMongoError as exc:
        raise TaskFailure(f"insert into {coll.full_name}: {_reason(exc, uri)}") from None
    found = set()
    for i, (doc, own_id) in enumerate(lead):
        there = stored.get(json_util.dumps(doc["_id"]))
        if there is not None and (not own_id or there == doc):
            found.add(i)
    return found


def _found(ctx: RunContext, task_id: str, rows: list[Any], *, store: bool
           ) -> dict[str, Any]:
    """A read task's outputs: ``rows`` and ``size``, or the rows in an ION file of the
    execution's (``uri``) and ``size``."""
    if not store:
        return {"rows": rows, "size": len(rows)}
    try:
        stored, _ = Storage().put_records(execution_file_name(ctx, task_id, "ion"), rows)
    except StorageError as exc:
        raise TaskFailure(str(exc)) from None
    return {"uri": stored, "size": len(rows)}


def _already_there(coll: Any, doc: dict[str, Any], *, own_id: bool, uri: str) -> bool:
    """After a duplicate-key error on inserting ``doc``: True when the stored document with
    its ``_id`` is the one a previous attempt inserted (any, for a derived ``_id``; an equal
    one for the document's own); False when the duplicate is of another unique index.
    A different stored document under the document's own ``_id`` fails the task."""
    from pymongo.errors import PyMongoError

    try:
        stored = coll.find_one({"_id": doc["_id"]})
    except PyMongoError as exc:
        raise TaskFailure(f"insert into {coll.full_name}: {_reason(exc, uri)}") from None
    if stored is None:
        return False
    if own_id and stored != doc:
        raise TaskFailure(f"insert into {coll.full_name}: a different document with "
                          f"_id {_plain(doc['_id'])!r} is already there")
    return True


class _Mongo(TaskBase):
    """What the MongoDB tasks share: the connection, database and collection."""

    BLOCKING: ClassVar[bool] = True
    connection: MongoDbConnection = Field(description="the server's connection")
    database: str = Field(min_length=1, description="the database (rendered)")
    collection: str = Field(min_length=1, description="the collection (rendered)")

    def _collection(self, ctx: RunContext) -> tuple[Any, str]:
        uri = str(ctx.render(self.connection.uri))
        try:
            client = _client(uri)
        except Exception as exc:
            raise TaskFailure(f"MongoDB connection string: {_reason(exc, uri)}") from None
        return client[str(ctx.render(self.database))][str(ctx.render(self.collection))], uri


@task_type("mongodb.InsertOne", aliases=("io.kestra.plugin.mongodb.InsertOne",))
class InsertOne(_Mongo):
    """Insert one document; outputs ``insertedId``, ``wasAcknowledged`` and
    ``alreadyInserted`` (a replay found it there)."""

    type: Literal["mongodb.InsertOne"] = Field(description="the task type")
    document: Any = Field(description="the document (rendered): a map, or Extended-JSON text")
    idempotent: bool = Field(
        default=True,
        description="a document without `_id` gets one derived from the execution, the task "
                    "and the iteration, so a replay inserts nothing twice; false: the driver "
                    "makes a new one each time (Kestra's behaviour)")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        from pymongo.errors import DuplicateKeyError, PyMongoError

        doc = _document(ctx.render(self.document), "document")
        own_id = "_id" in doc
        if not own_id and self.idempotent:
            doc["_id"] = derived_id(ctx, self.id)
        coll, uri = self._collection(ctx)
        try:
            result = coll.insert_one(doc)
        except DuplicateKeyError as exc:
            if not (self.idempotent and _already_there(coll, doc, own_id=own_id, uri=uri)):
                raise TaskFailure(f"insert into {coll.full_name}: {_reason(exc, uri)}"
                                  ) from None
            ctx.log("INFO", f"_id {_plain(doc['_id'])} already in {coll.full_name} (a replay):"
                            " not inserted again")
            return {"insertedId": str(_plain(doc["_id"])), "wasAcknowledged": True,
                    "alreadyInserted": True}
        except PyMongoError as exc:
            raise TaskFailure(f"insert into {coll.full_name}: {_reason(exc, uri)}") from None
        return {"insertedId": str(_plain(result.inserted_id)),
                "wasAcknowledged": bool(result.acknowledged), "alreadyInserted": False}


@task_type("mongodb.Find", aliases=("io.kestra.plugin.mongodb.Find",))
class Find(_Mongo):
    """Read the documents matching ``filter``; outputs ``rows`` and ``size`` (or, with
    ``store``, ``uri`` and ``size``). ObjectIds are given as text."""

    type: Literal["mongodb.Find"] = Field(description="the task type")
    filter: Any = Field(default=None, description="the query (rendered): a map or "
                                                  "Extended-JSON text; default: every document")
    projection: Any = Field(default=None, description="the fields to return (a map or JSON)")
    sort: Any = Field(default=None, description="the order, e.g. `{n: 1}` (a map or JSON)")
    skip: int | None = Field(default=None, ge=0, description="documents to skip")
    limit: int | None = Field(default=None, ge=0, description="at most this many documents")
    store: bool = Field(default=False, description="write the documents to an ION file in "
                                                   "internal storage (output `uri`) instead of "
                                                   "`rows`")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        from pymongo.errors import PyMongoError

        query = _document(ctx.render(self.filter), "filter") if self.filter is not None else {}
        projection = (_document(ctx.render(self.projection), "projection")
                      if self.projection is not None else None)
        order = _document(ctx.render(self.sort), "sort") if self.sort is not None else None
        coll, uri = self._collection(ctx)
        try:
            cursor = coll.find(query, projection)
            if order:
                cursor = cursor.sort(list(order.items()))
            if self.skip:
                cursor = cursor.skip(self.skip)
            if self.limit:
                cursor = cursor.limit(self.limit)
            rows = [_plain(d) for d in cursor]
        except PyMongoError as exc:
            raise TaskFailure(f"find in {coll.full_name}: {_reason(exc, uri)}") from None
        return _found(ctx, self.id, rows, store=self.store)


def _operator_keys(value: Any, operation: str) -> None:
    """ValueError when a literal ``document`` map cannot fit ``operation``: an update needs
    update operators (``$set``...), a replacement must have none."""
    if not isinstance(value, Mapping) or not value:
        return  # text or a template: checked when rendered, by the driver
    keys = [str(k) for k in value]
    if operation == "REPLACE_ONE":
        bad = [k for k in keys if k.startswith("$")]
        if bad:
            raise ValueError(f"a replacement is the new document: it cannot hold update "
                             f"operators ({', '.join(bad)}); update with those instead")
    else:
        bad = [k for k in keys if not k.startswith("$")]
        if bad:
            raise ValueError(f"an update holds update operators such as `$set: {{...}}`, "
                             f"not fields ({', '.join(bad)}); replace the whole document "
                             "(REPLACE_ONE, replaceOne) to write fields")


@task_type("mongodb.Update", aliases=("io.kestra.plugin.mongodb.Update",))
class Update(_Mongo):
    """Update (``UPDATE_ONE``, the default, or ``UPDATE_MANY``) or replace (``REPLACE_ONE``)
    the documents matching ``filter``; outputs ``matchedCount``, ``modifiedCount``,
    ``upsertedId`` (always null: as in Kestra, no upsert) and ``wasAcknowledged``.

    Replays (G2): the task runs again when its record is replayed or retried; what that
    does is the update's own nature, not something the task changes. A replacement, and an
    update made only of ``$set``, ``$unset``, ``$min``, ``$max``, ``$addToSet`` or ``$pull``,
    leaves the same documents however often it runs (a replay reports ``modifiedCount: 0``).
    ``$inc``, ``$mul``, ``$push``, ``$pop`` and ``$currentDate`` are applied again by each
    replay (a counter counts twice). For those, make the filter refuse a document this
    execution already updated and record the execution in the same update, e.g.
    ``filter: {_id: ..., applied: {$ne: "{{ execution.id }}"}}`` with
    ``document: {$inc: {n: 1}, $addToSet: {applied: "{{ execution.id }}"}}``: one update is
    atomic on one document, so a replay then matches nothing."""

    type: Literal["mongodb.Update"] = Field(description="the task type")
    filter: Any = Field(description="the documents to update (rendered): a map or "
                                    "Extended-JSON text")
    document: Any = Field(description="the update (`{$set: {...}}`...), or with REPLACE_ONE "
                                      "the new document (rendered): a map or Extended-JSON "
                                      "text")
    operation: Literal["UPDATE_ONE", "UPDATE_MANY", "REPLACE_ONE"] = Field(
        default="UPDATE_ONE", description="UPDATE_ONE (the first match), UPDATE_MANY (every "
                                          "match) or REPLACE_ONE (the first match replaced "
                                          "by `document`)")

    @model_validator(mode="after")
    def _fits(self) -> Update:
        _operator_keys(self.document, self.operation)
        return self

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        from pymongo.errors import PyMongoError

        query = _document(ctx.render(self.filter), "filter")
        doc = _document(ctx.render(self.document), "document")
        try:
            _operator_keys(doc, self.operation)
        except ValueError as exc:
            raise TaskFailure(f"`document`: {exc}") from None
        coll, uri = self._collection(ctx)
        try:
            if self.operation == "REPLACE_ONE":
                result = coll.replace_one(query, doc)
            elif self.operation == "UPDATE_ONE":
                result = coll.update_one(query, doc)
            else:
                result = coll.update_many(query, doc)
        except (PyMongoError, ValueError, TypeError) as exc:
            raise TaskFailure(f"{self.operation} in {coll.full_name}: {_reason(exc, uri)}"
                              ) from None
        upserted = result.upserted_id
        return {"upsertedId": None if upserted is None else str(_plain(upserted)),
                "wasAcknowledged": bool(result.acknowledged),
                "matchedCount": result.matched_count, "modifiedCount": result.modified_count}


@task_type("mongodb.Delete", aliases=("io.kestra.plugin.mongodb.Delete",))
class Delete(_Mongo):
    """Delete the first document (``DELETE_ONE``, the default) or every document
    (``DELETE_MANY``) matching ``filter``; outputs ``deletedCount`` and
    ``wasAcknowledged``.

    Replays (G2): deleting what is already gone deletes nothing (``deletedCount: 0``), so a
    replay of a delete whose filter matches one document at most (an ``_id``, a unique
    field) changes nothing. ``DELETE_ONE`` with a filter several documents match deletes
    another one on each replay; ``DELETE_MANY`` deletes, again, whatever matches when the
    replay runs (documents written since included). As in Kestra, no ``filter`` matches
    every document."""

    type: Literal["mongodb.Delete"] = Field(description="the task type")
    filter: Any = Field(default=None, description="the documents to delete (rendered): a map "
                                                  "or Extended-JSON text; default: every "
                                                  "document")
    operation: Literal["DELETE_ONE", "DELETE_MANY"] = Field(
        default="DELETE_ONE", description="DELETE_ONE (the first match) or DELETE_MANY "
                                          "(every match)")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        from pymongo.errors import PyMongoError

        query = _document(ctx.render(self.filter), "filter") if self.filter is not None else {}
        coll, uri = self._collection(ctx)
        try:
            if self.operation == "DELETE_ONE":
                result = coll.delete_one(query)
            else:
                result = coll.delete_many(query)
        except (PyMongoError, ValueError, TypeError) as exc:
            raise TaskFailure(f"{self.operation} in {coll.full_name}: {_reason(exc, uri)}"
                              ) from None
        return {"deletedCount": result.deleted_count,
                "wasAcknowledged": bool(result.acknowledged)}


#: a ``mongodb.Bulk`` record's operation -> the fields its body may have
_BULK_FIELDS: dict[str, frozenset[str]] = {
    "insertOne": frozenset({"document"}),
    "replaceOne": frozenset({"filter", "replacement", "upsert", "collation", "hint"}),
    "updateOne": frozenset({"filter", "update", "upsert", "arrayFilters", "collation", "hint"}),
    "updateMany": frozenset({"filter", "update", "upsert", "arrayFilters", "collation",
                             "hint"}),
    "deleteOne": frozenset({"filter", "collation", "hint"}),
    "deleteMany": frozenset({"filter", "collation", "hint"}),
}


def _bulk_operation(record: Any, index: int) -> tuple[str, dict[str, Any]]:
    """A ``mongodb.Bulk`` record as (operation, BSON-ready body); TaskFailure naming the
    record (0-based, the file's line number minus one for JSON lines) otherwise."""
    where = f"`from` record {index}"
    body: Any = record
    if isinstance(record, Mapping) and len(record) == 1:
        name, body = next(iter(record.items()))
    else:
        name = None
    if name not in _BULK_FIELDS:
        found = (", ".join(map(str, record)) if isinstance(record, Mapping)
                 else type(record).__name__)
        raise TaskFailure(f"{where}: expected one of {', '.join(_BULK_FIELDS)} as the record's "
                          f"only key, got {found or 'an empty map'}")
    doc = _document(body, f"{where}.{name}")
    if name == "insertOne":
        if len(doc) == 1 and isinstance(doc.get("document"), dict):
            doc = doc["document"]  # bulkWrite's {document: {...}}; else the document itself
        return name, doc
    unknown = sorted(set(doc) - _BULK_FIELDS[name])
    if unknown:
        raise TaskFailure(f"{where}.{name}: unknown field {', '.join(unknown)} (known: "
                          f"{', '.join(sorted(_BULK_FIELDS[name]))})")
    needed = {"replaceOne": ("filter", "replacement"), "updateOne": ("filter", "update"),
              "updateMany": ("filter", "update")}.get(name, ("filter",))
    for field in needed:
        value = doc.get(field)
        if not (isinstance(value, dict) or (field == "update" and isinstance(value, list))):
            raise TaskFailure(f"{where}.{name}: `{field}` must be a document (a map)")
    try:
        if name == "replaceOne":
            _operator_keys(doc["replacement"], "REPLACE_ONE")
        elif name in ("updateOne", "updateMany"):
            _operator_keys(doc["update"], "UPDATE_ONE")
    except ValueError as exc:
        raise TaskFailure(f"{where}.{name}: {exc}") from None
    return name, doc


def _write_model(name: str, doc: dict[str, Any]) -> Any:
    from pymongo import DeleteMany, DeleteOne, InsertOne, ReplaceOne, UpdateMany, UpdateOne

    options = {k: doc[k] for k in ("collation", "hint") if k in doc}
    if name == "insertOne":
        return InsertOne(doc)
    if name == "replaceOne":
        return ReplaceOne(doc["filter"], doc["replacement"], upsert=bool(doc.get("upsert")),
                          **options)
    if name in ("updateOne", "updateMany"):
        model = UpdateOne if name == "updateOne" else UpdateMany
        return model(doc["filter"], doc["update"], upsert=bool(doc.get("upsert")),
                     array_filters=doc.get("arrayFilters"), **options)
    return (DeleteOne if name == "deleteOne" else DeleteMany)(doc["filter"], **options)


class _BulkWrite(_Mongo):
    """What ``mongodb.Bulk`` and ``mongodb.Load`` share: a file of records (``from``) made
    into write operations (:meth:`_operations`: all checked before anything is written),
    sent ``chunk`` per ``bulkWrite`` request in order; an insert a previous attempt made is
    skipped (``alreadyInserted``)."""

    from_: str = Field(alias="from", min_length=1,
                       description="the file (rendered internal-storage or file:// URI, "
                                   "e.g. `{{ outputs.write.uri }}`): ION, or JSON one record "
                                   "a line")
    chunk: int = Field(default=1000, ge=1, description="operations per bulkWrite request")
    idempotent: bool = Field(
        default=True,
        description="an inserted document without `_id` gets one derived from the "
                    "execution, the task, the iteration and the record, so a replay inserts "
                    "nothing twice; false: the driver makes a new one each time (Kestra's)")

    model_config = {**_Mongo.model_config, "populate_by_name": True}

    def _records(self, ctx: RunContext) -> list[Any]:
        """The records of the rendered ``from``; TaskFailure when it cannot be read."""
        source = str(ctx.render(self.from_)).strip()
        try:
            return list(read_records(source))
        except StorageError as exc:
            raise TaskFailure(f"`from`: {exc}") from None
        except Exception as exc:  # neither ION nor JSON
            raise TaskFailure(f"`from` file {source} is neither ION nor JSON lines: "
                              f"{type(exc).__name__}: {str(exc)[:200]}") from None

    def _insert(self, ctx: RunContext, doc: dict[str, Any], index: int
                ) -> tuple[str, dict[str, Any], bool, Any]:
        """The insert of ``doc`` (record ``index``), its ``_id`` derived unless it has one."""
        own_id = "_id" in doc
        if not own_id and self.idempotent:
            doc["_id"] = derived_id(ctx, self.id, index)
        return "insertOne", doc, own_id, _write_model("insertOne", doc)

    def _operations(self, ctx: RunContext) -> list[tuple[str, dict[str, Any], bool, Any]]:
        """(operation, body, the insert brings its own ``_id``, pymongo's write model) of
        every record: a bad record fails the task before anything is written."""
        raise NotImplementedError

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        from pymongo.errors import BulkWriteError

        ops = self._operations(ctx)
        coll, uri = self._collection(ctx)
        totals = {"nInserted": 0, "nMatched": 0, "nModified": 0, "nRemoved": 0,
                  "nUpserted": 0}
        already = 0
        for first in range(0, len(ops), self.chunk):
            # (the record's index in the file, its operation) not yet written
            pending = list(enumerate(ops[first:first + self.chunk], start=first))
            while pending:
                try:
                    result = coll.bulk_write([op[3] for _, op in pending], ordered=True)
                    details = result.bulk_api_result
                    pending = []
                except BulkWriteError as exc:
                    details = exc.details
                    error = (details.get("writeErrors") or [{}])[0]
                    at = int(error.get("index", 0))
                    index, (name, doc, own_id, _) = pending[at]
                    where = f"bulk write to {coll.full_name}: `from` record {index} ({name})"
                    try:
                        skip = (error.get("code") == 11000 and name == "insertOne"
                                and self.idempotent
                                and _already_there(coll, doc, own_id=own_id, uri=uri))
                    except TaskFailure as failure:
                        raise TaskFailure(f"{where}: {str(failure).partition(': ')[2]}"
                                          ) from None
                    if not skip:
                        message = " ".join(str(error.get("errmsg", exc)).split())[:300]
                        raise TaskFailure(f"{where}: {message}") from None
                    rest = pending[at + 1:]
                    found = _inserted_before(coll, [op for _, op in rest], uri=uri)
                    already += 1 + len(found)
                    pending = [p for i, p in enumerate(rest) if i not in found]
                except Exception as exc:  # the server, or the driver reading its answer
                    raise TaskFailure(f"bulk write to {coll.full_name}: `from` records "
                                      f"{pending[0][0]}-{pending[-1][0]}: {_reason(exc, uri)}"
                                      ) from None
                for key in totals:
                    totals[key] += int(details.get(key, 0) or 0)
        if already:
            ctx.log("INFO", f"{already} document(s) of {coll.full_name} already inserted "
                            "(a replay): not inserted again")
        return {"size": len(ops), "insertedCount": totals["nInserted"],
                "matchedCount": totals["nMatched"], "modifiedCount": totals["nModified"],
                "deletedCount": totals["nRemoved"], "upsertedCount": totals["nUpserted"],
                "alreadyInserted": already}


@task_type("mongodb.Bulk", aliases=("io.kestra.plugin.mongodb.Bulk",))
class Bulk(_BulkWrite):
    """Run the write operations of a file (``from``: ION, or JSON one record a line as
    Kestra's), ``chunk`` operations per ``bulkWrite`` request, in order; outputs ``size``
    (records), ``insertedCount``, ``matchedCount``, ``modifiedCount``, ``deletedCount``,
    ``upsertedCount`` and ``alreadyInserted``.

    Each record is one operation in ``db.collection.bulkWrite()``'s form:
    ``{"insertOne": {"document": {...}}}`` (or, as Kestra also reads it, the document
    itself), ``{"updateOne"|"updateMany": {"filter", "update", "upsert", "arrayFilters"}}``,
    ``{"replaceOne": {"filter", "replacement", "upsert"}}``, ``{"deleteOne"|"deleteMany":
    {"filter"}}`` (each also ``collation``, ``hint``); values may be Extended JSON
    (``{"$oid": ...}``, ``{"$date": ...}``). A record of another shape fails the task
    naming its index, before anything is written. The operations run in the file's order;
    the first one the server refuses stops the task (the chunks before it stay written).

    Replays (G2): as for ``mongodb.InsertOne``, an insert without ``_id`` gets one derived
    from the execution, the task, the iteration and the record's index (``idempotent:
    false``: the server's); an insert a previous attempt made is found there and skipped
    (counted in ``alreadyInserted``, not ``insertedCount``), so a replayed or retried task
    inserts nothing twice, a task that failed half-way included. Updates and deletes are
    run again by a replay, with the guarantees of ``mongodb.Update`` and ``mongodb.Delete``:
    harmless for ``$set``/replacements/deletes by ``_id``, not for ``$inc``/``$push``."""

    type: Literal["mongodb.Bulk"] = Field(description="the task type")

    def _operations(self, ctx: RunContext) -> list[tuple[str, dict[str, Any], bool, Any]]:
        out = []
        for index, record in enumerate(self._records(ctx)):
            name, doc = _bulk_operation(record, index)
            if name == "insertOne":
                out.append(self._insert(ctx, doc, index))
                continue
            try:
                model = _write_model(name, doc)
            except (TypeError, ValueError) as exc:
                raise TaskFailure(f"`from` record {index}.{name}: "
                                  f"{' '.join(str(exc).split())[:200]}") from None
            out.append((name, doc, "_id" in doc, model))
        return out


@task_type("mongodb.Load", aliases=("io.kestra.plugin.mongodb.Load",))
class Load(_BulkWrite):
    """Insert every record of a file (``from``: ION, or JSON one record a line) as a
    document, ``chunk`` per ``bulkWrite`` request, in order; outputs as ``mongodb.Bulk``'s
    (``size``, ``insertedCount``, ``alreadyInserted``, the other counts 0).

    ``idKey`` names a field whose value becomes the document's ``_id`` (an ObjectId when it
    is 24 hex digits, as Kestra makes one; any other value as it is, where Kestra fails),
    removed from the document unless ``removeIdKey: false``. A record that is not a map, or
    lacks that field, fails the task naming it before anything is written.

    Replays (G2): a document without ``_id`` gets one derived from the execution, the task,
    the iteration and the record's index (``idempotent: false``: the driver's); one a
    previous attempt inserted is skipped (``alreadyInserted``), so a replayed or retried
    load inserts nothing twice. With ``idKey`` the ``_id`` is the record's own: the same
    document is skipped, a different one stored under that ``_id`` fails the task."""

    type: Literal["mongodb.Load"] = Field(description="the task type")
    idKey: str | None = Field(default=None, min_length=1,
                              description="a field whose value becomes `_id` (rendered)")
    removeIdKey: bool = Field(default=True,
                              description="drop the `idKey` field from the document")

    def _operations(self, ctx: RunContext) -> list[tuple[str, dict[str, Any], bool, Any]]:
        from bson import ObjectId

        key = str(ctx.render(self.idKey)) if self.idKey is not None else None
        out = []
        for index, record in enumerate(self._records(ctx)):
            doc = _document(record, f"from` record `{index}")
            if key is not None:
                if key not in doc:
                    raise TaskFailure(f"`from` record {index} has no field {key!r} (`idKey`)")
                value = doc.pop(key) if self.removeIdKey else doc[key]
                doc["_id"] = (ObjectId(value) if isinstance(value, str) and len(value) == 24
                              and ObjectId.is_valid(value) else value)
            out.append(self._insert(ctx, doc, index))
        return out


@task_type("mongodb.Aggregate", aliases=("io.kestra.plugin.mongodb.Aggregate",))
class Aggregate(_Mongo):
    """Run an aggregation ``pipeline`` (a list of stages: maps, or Extended-JSON text of the
    list) on the collection; outputs ``rows`` and ``size``, or with ``store: STORE`` (or
    ``true``) an ION file (``uri``) and ``size``. ObjectIds are given as text. It only
    reads, unless a stage writes (``$out``, ``$merge``): a replay runs that stage again."""

    type: Literal["mongodb.Aggregate"] = Field(description="the task type")
    pipeline: Any = Field(description="the stages (rendered): a list of maps, or JSON text")
    allowDiskUse: bool = Field(default=True, description="let stages write temporary files "
                                                         "past the server's memory limit")
    maxTimeMs: int = Field(default=60_000, ge=0, description="the server's time limit in "
                                                            "milliseconds (0: none)")
    batchSize: int = Field(default=1000, ge=0, description="documents per cursor batch")
    store: Literal["FETCH", "STORE"] | bool = Field(
        default="FETCH", description="`FETCH` (or false): the documents in `rows`; `STORE` "
                                     "(or true): written to an ION file (`uri`)")

    def _stages(self, ctx: RunContext) -> list[dict[str, Any]]:
        from bson import json_util

        value = ctx.render(self.pipeline)
        if isinstance(value, str):
            try:
                value = json_util.loads(value)
            except Exception as exc:
                raise TaskFailure("`pipeline` is not (Extended) JSON: "
                                  f"{' '.join(str(exc).split())[:200]}") from None
        if not isinstance(value, list):
            raise TaskFailure(f"`pipeline` must be a list of stages, got {type(value).__name__}")
        return [_document(stage, f"pipeline` stage `{i}") for i, stage in enumerate(value)]

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        from pymongo.errors import PyMongoError

        stages = self._stages(ctx)
        coll, uri = self._collection(ctx)
        options: dict[str, Any] = {"allowDiskUse": self.allowDiskUse}
        if self.maxTimeMs:
            options["maxTimeMS"] = self.maxTimeMs
        if self.batchSize:
            options["batchSize"] = self.batchSize
        try:
            rows = [_plain(d) for d in coll.aggregate(stages, **options)]
        except PyMongoError as exc:
            raise TaskFailure(f"aggregate on {coll.full_name}: {_reason(exc, uri)}") from None
        return _found(ctx, self.id, rows, store=self.store not in ("FETCH", False))
