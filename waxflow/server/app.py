"""The Starlette application: the pages, the JSON API, the static files, the guard."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from waxflow.server import api, pages
from waxflow.server.context import ServerContext
from waxflow.server.index_worker import IndexUnavailable
from waxflow.server.security import Guard

STATIC = Path(__file__).with_name("static")


async def _unavailable(request: Request, exc: Exception) -> Response:
    """503 with one line: the index file is busy or unreadable, or a query timed out."""
    text = str(exc) if isinstance(exc, IndexUnavailable) else \
        "the execution index did not answer in time (a long sync?); try again"
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": text}, status_code=503)
    return PlainTextResponse(text, status_code=503)


def create_app(ctx: ServerContext, *, token: str | None, loopback: bool) -> Starlette:
    """The ASGI app over ``ctx``; every request passes the :class:`Guard` (token, host,
    same-origin actions, security headers)."""
    ctx.token_set = token is not None
    app = Starlette(
        routes=[*pages.ROUTES, *api.ROUTES,
                Mount("/static", app=StaticFiles(directory=STATIC), name="static")],
        middleware=[Middleware(Guard, token=token, loopback=loopback)],
        exception_handlers={IndexUnavailable: _unavailable, TimeoutError: _unavailable})
    app.state.waxflow = ctx
    return app
