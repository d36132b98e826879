"""MongoDB tasks (Kestra's ``io.kestra.plugin.mongodb`` plugin), through ``pymongo``: any
server speaking MongoDB's wire protocol (MongoDB, FerretDB, ...).

``mongodb.InsertOne`` inserts ``document`` (a map, or Extended-JSON text such as
``{"_id": {"$oid": "..."}}`` — Kestra's "BSON string") into ``database.collection`` and
outputs ``insertedId`` (text) and ``wasAcknowledged``. ``mongodb.Find`` reads the documents
matching ``filter`` (``projection``, ``sort``, ``skip``, ``limit``) and outputs ``rows`` and
``size``, or with ``store: true`` an ION file (``uri``) and ``size``.

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

from pydantic import BaseModel, ConfigDict, Field

from waxflow.connectors.serdes_tasks import execution_file_name
from waxflow.connectors.storage import Storage, StorageError
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

__all__ = ["Find", "InsertOne", "MongoDbConnection", "derived_id"]

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
        elif isinstance(value, Mapping):
            doc = json_util.loads(json.dumps(value, default=str))
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


def derived_id(ctx: RunContext, task_id: str) -> Any:
    """The ``_id`` of an idempotent insert: an ObjectId from the execution id, the task id
    and the iteration value; its first 4 bytes the trigger record's timestamp (seconds)
    when there is one."""
    from bson import ObjectId

    execution = ctx.vars.get("execution") or {}
    taskrun = ctx.vars.get("taskrun") or {}
    trigger = ctx.vars.get("trigger") or {}
    exec_id = execution.get("id") if isinstance(execution, Mapping) else None
    if not exec_id:
        raise TaskFailure(f"{task_id}: no execution id in the context")
    value = taskrun.get("value") if isinstance(taskrun, Mapping) else None
    digest = hashlib.sha256(json.dumps([str(exec_id), task_id, value], default=str)
                            .encode()).digest()
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
            stored = None
            if self.idempotent:  # a duplicate _id, or of another unique index?
                try:
                    stored = coll.find_one({"_id": doc["_id"]})
                except PyMongoError as again:
                    raise TaskFailure(f"insert into {coll.full_name}: {_reason(again, uri)}"
                                      ) from None
            if stored is None:
                raise TaskFailure(f"insert into {coll.full_name}: {_reason(exc, uri)}"
                                  ) from None
            if own_id and stored != doc:
                raise TaskFailure(f"insert into {coll.full_name}: a different document with "
                                  f"_id {_plain(doc['_id'])!r} is already there") from None
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
        if not self.store:
            return {"rows": rows, "size": len(rows)}
        try:
            stored, _ = Storage().put_records(execution_file_name(ctx, self.id, "ion"), rows)
        except StorageError as exc:
            raise TaskFailure(str(exc)) from None
        return {"uri": stored, "size": len(rows)}
