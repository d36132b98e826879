"""The server-rendered pages: executions, one execution, record trace, flows, replay.

Templates are Jinja2 with autoescape on (every value from a record or a document is text);
the SVG comes from :mod:`.chart`. Each page calls the same functions as the JSON API.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from waxflow.recovery.executions_cli import duration_text, trigger_text, when_text
from waxflow.recovery.index import AmbiguousIdError, normalize_date
from waxflow.server import api, chart, history
from waxflow.server.context import context
from waxflow.server.filters import LEVELS, STATES, BadRequest, level, whole
from waxflow.server.replays import ReplayError

CHART_SPAN = timedelta(hours=2)  # the executions chart, without since/until: up to the newest
ENV = Environment(loader=PackageLoader("waxflow.server", "templates"),
                  autoescape=select_autoescape(default=True, default_for_string=True),
                  trim_blocks=True, lstrip_blocks=True)
ENV.filters.update(when=when_text, duration=duration_text, trigger=trigger_text,
                   color=chart.color, attempt_duration=lambda a: duration_text(
                       span_ms(a.get("startDate"), a.get("endDate"))
                       if isinstance(a, dict) else None),
                   pretty=lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str))


def span_ms(start: object, end: object) -> float | None:
    """Milliseconds from ``start`` to ``end`` (ISO dates); None when either is missing."""
    a, b = normalize_date(start), normalize_date(end)
    if not a or not b:
        return None
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    return (datetime.strptime(b, fmt) - datetime.strptime(a, fmt)).total_seconds() * 1000


def _render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    ctx = context(request)
    html = ENV.get_template(name).render(
        request=request, nonce=request.scope.get("state", {}).get("csp_nonce", ""),
        sync=ctx.worker.status.document(), states=STATES, levels=LEVELS,
        token_set=ctx.token_set, **values)
    return HTMLResponse(html, status_code=status)


def _problem(request: Request, status: int, message: str) -> HTMLResponse:
    return _render(request, "error.html", status=status, message=message)


def home(request: Request) -> Response:
    return RedirectResponse("/executions", status_code=307)


def executions(request: Request) -> Response:
    try:
        flt, limit, offset = api.page_params(request)
        bucket = whole(request.query_params, "bucket", 60, low=1, high=86_400)
        page, rows = context(request).worker.call(lambda idx: (
            history.executions(idx, flt, limit=limit, offset=offset),
            history.histogram(idx, flt, bucket_seconds=bucket, recent=CHART_SPAN)))
    except BadRequest as exc:
        return _problem(request, 400, str(exc))
    params = flt.params()

    def link(**changes: Any) -> str:
        merged = {**params, "limit": str(limit), **{k: str(v) for k, v in changes.items()}}
        return "/executions?" + urlencode({k: v for k, v in merged.items() if v != ""})

    newer = link(offset=max(0, offset - limit)) if offset > 0 else None
    older = link(offset=offset + limit) if offset + limit < page["total"] else None
    return _render(request, "executions.html", page=page, flt=flt, chart=chart.state_chart(rows),
                   newer=newer, older=older, api_query=urlencode(params),
                   state_links={s: link(state=s, offset=0) for s in STATES},
                   all_link=link(state="", offset=0),
                   refresh_ms=int(context(request).refresh_seconds * 1000))


def execution(request: Request) -> Response:
    exec_id = request.path_params["id"]
    try:
        doc = api.execution_value(request, exec_id)
        min_level = level(request.query_params)
    except (BadRequest, AmbiguousIdError) as exc:
        return _problem(request, 400, str(exc))
    except LookupError as exc:
        return _problem(request, 404, str(exc.args[0]) if exc.args else "not found")
    logs = history.logs_at_least([ln for ln in doc.get("logs") or [] if isinstance(ln, dict)],
                                 min_level)
    rec = api.record_value(request, doc)
    return _render(request, "execution.html", doc=doc, record=rec, logs=logs,
                   min_level=min_level, timeline=chart.timeline(doc),
                   replayed=request.query_params.get("replayed"))


def replay_confirm(request: Request) -> Response:
    try:
        doc = api.execution_value(request, request.path_params["id"])
    except AmbiguousIdError as exc:
        return _problem(request, 400, str(exc))
    except LookupError as exc:
        return _problem(request, 404, str(exc.args[0]) if exc.args else "not found")
    return _render(request, "replay.html", doc=doc)


def replay_now(request: Request) -> Response:
    try:
        new = api.replay_value(request, request.path_params["id"])
    except ReplayError as exc:
        return _problem(request, 409, f"cannot replay: {exc}")
    except AmbiguousIdError as exc:
        return _problem(request, 400, str(exc))
    except LookupError as exc:
        return _problem(request, 404, str(exc.args[0]) if exc.args else "not found")
    target = f"/executions/{new['id']}?" + urlencode({"replayed": new.get("runId") or ""})
    return RedirectResponse(target, status_code=303)


def trace(request: Request) -> Response:
    params = request.query_params
    result = None
    error = None
    if params.get("topic"):
        try:
            result = api.trace_value(request)
        except BadRequest as exc:
            error = str(exc)
    return _render(request, "trace.html", status=400 if error else 200, result=result,
                   error=error, topic=params.get("topic", ""),
                   partition=params.get("partition", "0"), offset=params.get("offset", ""))


def flows(request: Request) -> Response:
    return _render(request, "flows.html", flows=api.flows_value(request))


ROUTES = [
    Route("/", home),
    Route("/executions", executions),
    Route("/executions/{id}", execution),
    Route("/executions/{id}/replay", replay_confirm, methods=["GET"]),
    Route("/executions/{id}/replay", replay_now, methods=["POST"]),
    Route("/trace", trace),
    Route("/flows", flows),
]
