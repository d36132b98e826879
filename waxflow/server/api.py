"""The JSON API under ``/api/``, described by ``/api/openapi.json``.

Answers are JSON; a bad parameter is 400 ``{"error": "..."}`` naming it, an unknown execution
404, an execution that cannot be replayed 409. The pages render the same functions' results
(:mod:`.history`), so the API and the UI never disagree.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from waxflow.recovery.index import AmbiguousIdError
from waxflow.server import broker_view, history
from waxflow.server.context import context
from waxflow.server.filters import (
    MAX_LIMIT,
    BadRequest,
    ExecutionFilter,
    execution_filter,
    whole,
)
from waxflow.server.replays import ReplayError

API_VERSION = "1"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _answer(make: Any) -> JSONResponse:
    try:
        return JSONResponse(make())
    except BadRequest as exc:
        return _error(400, str(exc))
    except AmbiguousIdError as exc:
        return _error(400, str(exc))
    except LookupError as exc:
        return _error(404, str(exc.args[0]) if exc.args else "not found")


def page_params(request: Request) -> tuple[ExecutionFilter, int, int]:
    """The filters, ``limit`` (1-500, default 50) and ``offset`` of an executions query."""
    params = request.query_params
    return (execution_filter(params), whole(params, "limit", 50, low=1, high=MAX_LIMIT),
            whole(params, "offset", 0))


def executions_page(request: Request) -> dict[str, Any]:
    """``/api/executions`` as a value."""
    flt, limit, offset = page_params(request)
    return context(request).worker.call(
        lambda idx: history.executions(idx, flt, limit=limit, offset=offset))


def list_executions(request: Request) -> JSONResponse:
    return _answer(lambda: executions_page(request))


def counts(request: Request) -> JSONResponse:
    def make() -> dict[str, Any]:
        flt = execution_filter(request.query_params)
        page = context(request).worker.call(
            lambda idx: history.executions(idx, flt, limit=1, offset=0))
        newest = page["items"][0] if page["items"] else None
        return {"counts": page["counts"], "total": page["total"],
                "newest": newest["id"] if newest else None,
                "newestState": newest["state"] if newest else None}
    return _answer(make)


def histogram(request: Request) -> JSONResponse:
    def make() -> list[dict[str, Any]]:
        flt = execution_filter(request.query_params)
        bucket = whole(request.query_params, "bucket", 60, low=1, high=86_400)
        return context(request).worker.call(
            lambda idx: history.histogram(idx, flt, bucket_seconds=bucket))
    return _answer(make)


def execution_value(request: Request, exec_id: str) -> dict[str, Any]:
    """The execution's document with ``downstream`` and ``replay`` (``{"possible",
    "reason"}``); LookupError when unknown."""
    ctx = context(request)
    doc = ctx.worker.call(lambda idx: history.execution(idx, exec_id))
    if doc is None:
        hint = " (prefixes need at least 6 characters)" if len(exec_id) < 6 else ""
        raise LookupError(f"no execution matches {exec_id!r}{hint}")
    reason = ctx.flows.replay_blocker(doc)
    doc["replay"] = {"possible": reason is None, "reason": reason}
    return doc


def show(request: Request) -> JSONResponse:
    return _answer(lambda: execution_value(request, request.path_params["id"]))


def record_value(request: Request, doc: dict[str, Any]) -> dict[str, Any] | None:
    """The trigger record of a one-record execution, read from the broker; None otherwise."""
    trig = doc.get("trigger") if isinstance(doc.get("trigger"), dict) else None
    if not trig or trig.get("offset") is None or trig.get("topic") is None:
        return None
    conf = context(request).conf_for(doc.get("namespace"), doc.get("flowId"))
    return broker_view.trigger_record(conf, str(trig["topic"]), int(trig["partition"]),
                                      int(trig["offset"]))


def record(request: Request) -> JSONResponse:
    def make() -> dict[str, Any]:
        doc = execution_value(request, request.path_params["id"])
        found = record_value(request, doc)
        if found is None:
            raise BadRequest("execution is not the execution of one record")
        return found
    return _answer(make)


def downstream(request: Request) -> JSONResponse:
    def make() -> list[dict[str, Any]]:
        doc = execution_value(request, request.path_params["id"])
        found: list[dict[str, Any]] = doc["downstream"]
        return found
    return _answer(make)


def replay_value(request: Request, exec_id: str) -> dict[str, Any]:
    """Replay the execution (ReplayError when it cannot be), sync the index; the new run's
    terminal document."""
    ctx = context(request)
    doc = execution_value(request, exec_id)
    new = ctx.flows.replay(doc)
    ctx.worker.sync_now()
    return new


def replay(request: Request) -> JSONResponse:
    try:
        return JSONResponse(replay_value(request, request.path_params["id"]))
    except ReplayError as exc:
        return _error(409, str(exc))
    except AmbiguousIdError as exc:
        return _error(400, str(exc))
    except LookupError as exc:
        return _error(404, str(exc.args[0]) if exc.args else "not found")


def trace_value(request: Request) -> dict[str, Any]:
    """``{"topic", "partition", "offset", "executions"}`` for ``/api/trace``."""
    params = request.query_params
    topic = params.get("topic", "").strip()
    if not topic:
        raise BadRequest("topic: required")
    partition = whole(params, "partition", 0)
    offset = whole(params, "offset", -1)
    if offset < 0:
        raise BadRequest("offset: required")
    rows = context(request).worker.call(
        lambda idx: history.trace(idx, topic, partition, offset))
    return {"topic": topic, "partition": partition, "offset": offset, "executions": rows}


def trace(request: Request) -> JSONResponse:
    return _answer(lambda: trace_value(request))


def flows_value(request: Request) -> list[dict[str, Any]]:
    """Every flow seen in the history (and every ``--flow`` file), with lag per partition
    for the flows whose consumer group is known."""
    ctx = context(request)
    seen = ctx.worker.call(history.flows)
    by_name = {f"{f['namespace']}.{f['flow']}": f for f in seen}
    for name, given in ctx.flows.flows.items():
        if name not in by_name:
            by_name[name] = {"namespace": given.flow.namespace, "flow": given.flow.id,
                             "last_id": None, "last_state": None, "last_time": None,
                             "counts": {}, "topics": [], "group": None, "per_minute": 0.0}
    out = []
    for name, entry in sorted(by_name.items()):
        known = ctx.flows.flows.get(name)
        group = known.consumer_group() if known is not None else None
        lag = None
        if group is not None:
            lag = broker_view.group_lag(group[2], group[0], group[1])
        elif entry.get("group") and entry.get("topics"):
            lag = broker_view.group_lag(ctx.kafka_conf, str(entry["group"]),
                                        list(entry["topics"]))
        out.append({**entry, "file": str(known.path) if known else None, "lag": lag})
    return out


def flows(request: Request) -> JSONResponse:
    return _answer(lambda: flows_value(request))


def status(request: Request) -> JSONResponse:
    ctx = context(request)
    return JSONResponse({**ctx.worker.status.document(), "version": API_VERSION,
                         "flowFiles": sorted(ctx.flows.flows),
                         "skippedFlowFiles": ctx.flows.skipped})


def openapi(request: Request) -> JSONResponse:
    return JSONResponse(OPENAPI)


def _param(name: str, where: str, description: str, kind: str = "string",
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path",
            "description": description, "schema": {"type": kind}}


_FILTERS = [
    _param("flow", "query", "flow id or namespace.flowId"),
    _param("state", "query", "CREATED, RUNNING, RETRYING, SUCCESS, WARNING, FAILED or SKIPPED"),
    _param("topic", "query", "trigger topic (a record's, or any of a batch's)"),
    _param("since", "query", "start at or after: ISO datetime (naive = UTC) or 1h, 30m, 2d"),
    _param("until", "query", "start before: same forms as since"),
    _param("q", "query", "substring of the record key, or an execution-id prefix"),
]
_ID = _param("id", "path", "execution id, or a unique prefix of at least 6 characters")
_ERR = {"description": "bad parameter (one line naming it)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_NOT_FOUND = {"description": "no such execution",
              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_OBJ: dict[str, Any] = {"type": "object"}
_SUMMARY = {"$ref": "#/components/schemas/ExecutionSummary"}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "waxflow execution history", "version": API_VERSION,
             "description": "The execution history of waxflow flows (the execution-log "
                            "index), as the web UI shows it. With a server token, every "
                            "request needs 'Authorization: Bearer TOKEN'."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "ExecutionSummary": {
                "type": "object",
                "properties": {k: {} for k in (
                    "id", "namespace", "flowId", "state", "terminal", "startDate", "endDate",
                    "durationMs", "runs", "trigger", "upstreamExecutionId", "error")}},
        },
    },
    "security": [{}, {"bearer": []}],
    "paths": {
        "/api/executions": {"get": {
            "summary": "executions, newest first, with counts by state for the filters",
            "parameters": [*_FILTERS, _param("limit", "query", "page size, 1-500 (50)",
                                              "integer"),
                           _param("offset", "query", "executions to skip (0)", "integer")],
            "responses": {"200": _ok("a page", {"type": "object", "properties": {
                "items": {"type": "array", "items": _SUMMARY},
                "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                "total": {"type": "integer"}, "limit": {"type": "integer"},
                "offset": {"type": "integer"}}}), "400": _ERR}}},
        "/api/counts": {"get": {
            "summary": "counts by state and the newest execution, for the filters",
            "parameters": _FILTERS,
            "responses": {"200": _ok("counts", _OBJ), "400": _ERR}}},
        "/api/histogram": {"get": {
            "summary": "executions per time bucket and state, oldest first",
            "parameters": [*_FILTERS, _param("bucket", "query", "bucket seconds (60)",
                                              "integer")],
            "responses": {"200": _ok("rows {bucket, state, count}",
                                     {"type": "array", "items": _OBJ}), "400": _ERR}}},
        "/api/executions/{id}": {"get": {
            "summary": "one execution: task runs with attempts, outputs and errors, runs, "
                       "logs, downstream executions, whether it can be replayed here",
            "parameters": [_ID],
            "responses": {"200": _ok("the document", _OBJ), "404": _NOT_FOUND}}},
        "/api/executions/{id}/record": {"get": {
            "summary": "the execution's trigger record read from the broker (previews)",
            "parameters": [_ID],
            "responses": {"200": _ok("key, value, headers, timestamp (or error)", _OBJ),
                          "400": _ERR, "404": _NOT_FOUND}}},
        "/api/executions/{id}/downstream": {"get": {
            "summary": "executions triggered by records this execution produced",
            "parameters": [_ID],
            "responses": {"200": _ok("summaries", {"type": "array", "items": _SUMMARY}),
                          "404": _NOT_FOUND}}},
        "/api/executions/{id}/replay": {"post": {
            "summary": "run the execution's record again under the same id (a new run)",
            "parameters": [_ID],
            "responses": {"200": _ok("the new run's terminal document", _OBJ),
                          "404": _NOT_FOUND,
                          "409": {"description": "cannot be replayed here (why)",
                                  "content": {"application/json": {"schema": {
                                      "$ref": "#/components/schemas/Error"}}}}}}},
        "/api/trace": {"get": {
            "summary": "what happened to one record, and downstream",
            "parameters": [_param("topic", "query", "topic", required=True),
                           _param("partition", "query", "partition (0)", "integer"),
                           _param("offset", "query", "offset", "integer", required=True)],
            "responses": {"200": _ok("executions by depth", _OBJ), "400": _ERR}}},
        "/api/flows": {"get": {
            "summary": "every flow seen: last execution, counts, throughput, consumer lag",
            "responses": {"200": _ok("flows", {"type": "array", "items": _OBJ})}}},
        "/api/status": {"get": {
            "summary": "the index sync: topic, documents read, last sync, error",
            "responses": {"200": _ok("status", _OBJ)}}},
    },
}

ROUTES = [
    Route("/api/openapi.json", openapi),
    Route("/api/executions", list_executions),
    Route("/api/counts", counts),
    Route("/api/histogram", histogram),
    Route("/api/executions/{id}", show),
    Route("/api/executions/{id}/record", record),
    Route("/api/executions/{id}/downstream", downstream),
    Route("/api/executions/{id}/replay", replay, methods=["POST"]),
    Route("/api/trace", trace),
    Route("/api/flows", flows),
    Route("/api/status", status),
]
