"""Who may talk to the server, and what every response promises the browser.

:class:`Guard` is an ASGI middleware; it guarantees, for every request:

- **Token**: when the server has a token, the request carries it — ``Authorization: Bearer
  TOKEN``, or the session cookie set after one visit with ``?token=TOKEN`` (the cookie holds
  an HMAC of the token, not the token; the visit is redirected to the same URL without the
  token, so it stays out of the address bar and history). Otherwise: 401.
- **Host** (DNS rebinding): on a loopback address, the ``Host`` header must name loopback.
- **Actions** (any method but GET/HEAD/OPTIONS): refused with 403 when the browser says the
  request comes from another origin (``Origin`` or ``Sec-Fetch-Site``); the session cookie is
  ``SameSite=Strict``. With a token set, actions need it like everything else.
- **Headers**: a strict Content-Security-Policy (scripts and styles only from this server, or
  inline with the response's nonce; no frames, no plugins, forms post only here),
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin`` (so a browser still
  sends ``Origin`` with its POSTs here: ``no-referrer`` would make it ``null``), no caching.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "waxflow_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def session_value(token: str) -> str:
    """The cookie value standing for ``token`` (an HMAC: the cookie never holds the token)."""
    return hmac.new(token.encode(), b"waxflow-server-session", hashlib.sha256).hexdigest()


def csp(nonce: str) -> str:
    """The Content-Security-Policy of every response."""
    return ("default-src 'none'; "
            f"script-src 'self' 'nonce-{nonce}'; style-src 'self' 'nonce-{nonce}'; "
            "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")


class Guard:
    """The ASGI middleware described in the module doc; ``token`` None means no token.

    Sets ``scope["state"]["csp_nonce"]`` for templates that need a nonce.
    """

    def __init__(self, app: ASGIApp, *, token: str | None, loopback: bool) -> None:
        self.app = app
        self.token = token
        self.loopback = loopback
        self._session = session_value(token) if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(16)
        scope.setdefault("state", {})["csp_nonce"] = nonce
        headers = _headers(scope)
        method = scope["method"]
        problem = self._check(scope, headers, method)
        if problem is not None:
            status, text = problem
            await _plain(send, status, text, nonce, bearer=status == 401)
            return
        if self.token and method in SAFE_METHODS:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                   keep_blank_values=True))
            if "token" in query:  # checked above: trade it for the cookie
                query.pop("token")
                target = scope.get("root_path", "") + scope["path"]
                if query:
                    target += "?" + urlencode(query)
                await _redirect_with_cookie(send, target, self._session or "", nonce)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = [(k, v) for k, v in message.get("headers", [])
                       if k.lower() not in (b"content-security-policy",)]
                raw += _security_headers(nonce)
                message["headers"] = raw
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _check(self, scope: Scope, headers: dict[str, str], method: str
               ) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if self.loopback and not is_loopback(_host_name(host)):
            return 403, (f"host {host!r} is not this machine: the server listens on loopback "
                         "only (see waxflow server --host)")
        if method not in SAFE_METHODS and not _same_origin(scope, headers):
            return 403, "cross-origin request refused"
        if self.token and not self._authorized(scope, headers):
            return 401, ("a token is required: send 'Authorization: Bearer TOKEN', or open "
                         "any page once with ?token=TOKEN")
        return None

    def _authorized(self, scope: Scope, headers: dict[str, str]) -> bool:
        assert self.token is not None and self._session is not None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(
                auth[7:].strip().encode(), self.token.encode()):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header: as if absent
            cookie = SimpleCookie()
        morsel = cookie.get(COOKIE)
        if morsel is not None and hmac.compare_digest(morsel.value.encode(),
                                                      self._session.encode()):
            return True
        if scope["method"] in SAFE_METHODS:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            given = query.get("token")
            if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
                return True
        return False


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope.get("headers", [])}


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same_origin(scope: Scope, headers: dict[str, str]) -> bool:
    origin = headers.get("origin")
    if origin is not None and origin != "null":
        scheme = scope.get("scheme", "http")
        return origin == f"{scheme}://{headers.get('host', '')}"
    if origin == "null":
        return False
    site = headers.get("sec-fetch-site")
    return site in (None, "same-origin", "none")


def _security_headers(nonce: str) -> list[tuple[bytes, bytes]]:
    return [(b"content-security-policy", csp(nonce).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"x-frame-options", b"DENY"),
            (b"cache-control", b"no-store")]


async def _plain(send: Send, status: int, text: str, nonce: str, *, bearer: bool) -> None:
    body = (text + "\n").encode()
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"text/plain; charset=utf-8"),
                                          (b"content-length", str(len(body)).encode())]
    if bearer:
        headers.append((b"www-authenticate", b'Bearer realm="waxflow"'))
    await send({"type": "http.response.start", "status": status,
                "headers": headers + _security_headers(nonce)})
    await send({"type": "http.response.body", "body": body})


async def _redirect_with_cookie(send: Send, target: str, session: str, nonce: str) -> None:
    cookie = f"{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict"
    headers: list[tuple[bytes, Any]] = [
        (b"location", target.encode("latin-1", "replace")), (b"content-length", b"0"),
        (b"set-cookie", cookie.encode())]
    await send({"type": "http.response.start", "status": 303,
                "headers": headers + _security_headers(nonce)})
    await send({"type": "http.response.body", "body": b""})
