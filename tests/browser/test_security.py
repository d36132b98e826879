"""The server's guard (token, host, same-origin actions, headers) on a real ASGI app, in
process: the same middleware as ``waxflow server``, in front of a tiny app."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from waxflow.server.security import COOKIE, Guard, is_loopback, session_value

TOKEN = "s3cret-token-value"


def _app(token: str | None, loopback: bool = True) -> Starlette:
    def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"ok {request.method}")

    return Starlette(routes=[Route("/x", ok, methods=["GET", "POST"])],
                     middleware=[Middleware(Guard, token=token, loopback=loopback)])


def _client(token: str | None, loopback: bool = True) -> TestClient:
    return TestClient(_app(token, loopback), base_url="http://127.0.0.1:8080",
                      follow_redirects=False)


def test_with_a_token_every_request_needs_it() -> None:
    c = _client(TOKEN)
    assert c.get("/x").status_code == 401
    assert c.get("/x").headers["www-authenticate"].startswith("Bearer")
    assert c.get("/x", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/x", headers={"Authorization": f"Bearer {TOKEN}"}).text == "ok GET"
    assert c.post("/x").status_code == 401  # an action on loopback needs it too
    assert c.post("/x", headers={"Authorization": f"Bearer {TOKEN}"}).text == "ok POST"


def test_a_token_in_the_url_becomes_a_strict_cookie_without_the_token() -> None:
    c = _client(TOKEN)
    first = c.get(f"/x?a=1&token={TOKEN}")
    assert first.status_code == 303 and first.headers["location"] == "/x?a=1"
    cookie = first.headers["set-cookie"]
    assert TOKEN not in cookie and session_value(TOKEN) in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert c.get("/x").text == "ok GET"  # the client keeps the cookie
    forged = _client(TOKEN)
    forged.cookies.set(COOKIE, "forged")
    assert forged.get("/x").status_code == 401
    assert _client(TOKEN).post(f"/x?token={TOKEN}").status_code == 401  # never for actions


def test_actions_from_another_origin_are_refused() -> None:
    c = _client(None)
    assert c.post("/x", headers={"Origin": "http://127.0.0.1:8080"}).text == "ok POST"
    assert c.post("/x", headers={"Origin": "http://evil.example"}).status_code == 403
    assert c.post("/x", headers={"Origin": "null"}).status_code == 403
    assert c.post("/x", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert c.get("/x", headers={"Origin": "http://evil.example"}).text == "ok GET"


def test_on_loopback_the_host_must_be_loopback() -> None:
    c = _client(None)
    assert c.get("/x", headers={"Host": "localhost:8080"}).text == "ok GET"
    assert c.get("/x", headers={"Host": "[::1]:8080"}).text == "ok GET"
    assert c.get("/x", headers={"Host": "rebind.example:8080"}).status_code == 403
    # on another address (a token is then required) any Host name is fine
    other = _client(TOKEN, loopback=False)
    assert other.get("/x", headers={"Host": "ui.example",
                                    "Authorization": f"Bearer {TOKEN}"}).text == "ok GET"


@pytest.mark.parametrize("path", ["/x", "/missing"])
def test_every_answer_carries_the_security_headers(path: str) -> None:
    for c in (_client(None), _client(TOKEN)):
        r = c.get(path)
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"


def test_loopback_names() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.1", "example.com", "::"]))
