"""Unit tests for http.Request, notify.Webhook and notify.Slack against a loopback server."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from pytest_httpserver import HTTPServer
from werkzeug import Request as WRequest
from werkzeug import Response as WResponse

from tests.task_helpers import FakeContext, parse_task
from waxflow.connectors.http import HttpOptions, encode_body, get_client, public_url
from waxflow.tasks import TaskFailure

SECRET = "s3cr3t-token-value"


def request(uri: str, **props: Any) -> Any:
    return parse_task({"id": "req", "type": "http.Request", "uri": uri, **props})


def last_request(httpserver: HTTPServer) -> WRequest:
    return httpserver.log[-1][0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- http.Request ----------------------------------------------------------------------


def test_get_parses_json_response(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items", method="GET").respond_with_json(
        {"ok": True, "n": 3}, headers={"X-Reply": "yes"})
    out = request(httpserver.url_for("/items")).run(FakeContext())
    assert out["code"] == 200
    assert out["body"] == {"ok": True, "n": 3}
    assert out["headers"]["x-reply"] == "yes"
    json.dumps(out)  # outputs are JSON-serialisable


def test_text_response_is_text(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/t").respond_with_data("hello", content_type="text/plain")
    assert request(httpserver.url_for("/t")).run(FakeContext())["body"] == "hello"


def test_invalid_json_with_json_type_falls_back_to_text(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/j").respond_with_data("{nope", content_type="application/json")
    assert request(httpserver.url_for("/j")).run(FakeContext())["body"] == "{nope"


def test_post_dict_body_rendered_as_json(httpserver: HTTPServer) -> None:
    httpserver.expect_request(
        "/orders", method="POST", json={"id": 7, "tags": ["a"]},
        headers={"X-Trace": "t-7"},
    ).respond_with_data("", status=201)
    task = request(
        httpserver.url_for("/orders"), method="POST",
        body={"id": "{{ trigger.value.id }}", "tags": ["a"]},
        headers={"X-Trace": "t-{{ trigger.value.id }}"},
    )
    out = task.run(FakeContext({"trigger": {"value": {"id": 7}}}))
    assert out["code"] == 201
    assert last_request(httpserver).headers["Content-Type"] == "application/json"


def test_templated_body_giving_a_dict_is_sent_as_json(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/p", method="PUT", json={"a": 1}).respond_with_data("ok")
    task = request(httpserver.url_for("/p"), method="PUT", body="{{ trigger.value }}")
    assert task.run(FakeContext({"trigger": {"value": {"a": 1}}}))["code"] == 200


@pytest.mark.parametrize(
    ("props", "content_type"),
    [
        ({"body": "plain words"}, "text/plain; charset=utf-8"),
        ({"body": '{"a": 1}'}, "application/json"),
        ({"body": "a,b", "contentType": "text/csv"}, "text/csv"),
        ({"body": "a,b", "contentType": "text/csv", "headers": {"content-type": "x/y"}},
         "text/csv"),
        ({"body": "a,b", "headers": {"Content-Type": "x/y"}}, "x/y"),
    ],
)
def test_string_body_content_type(
    httpserver: HTTPServer, props: dict[str, Any], content_type: str
) -> None:
    httpserver.expect_request("/s", method="POST").respond_with_data("ok")
    request(httpserver.url_for("/s"), method="POST", **props).run(FakeContext())
    sent = last_request(httpserver)
    assert sent.headers["Content-Type"] == content_type
    assert sent.get_data(as_text=True) == props["body"]


def test_non_2xx_fails_with_method_uri_status_and_body_start(httpserver: HTTPServer) -> None:
    body = "service down " + "x" * 300
    httpserver.expect_request("/api").respond_with_data(body, status=503)
    uri = httpserver.url_for("/api") + f"?key={SECRET}"
    task = request(uri, method="POST", body={"a": 1}, headers={"Authorization": SECRET})
    with pytest.raises(TaskFailure) as info:
        task.run(FakeContext())
    message = str(info.value)
    assert message == (
        f"http.Request req: POST {httpserver.url_for('/api')} answered 503: {body[:200]}"
    )
    assert SECRET not in message


def test_allow_failed_returns_the_error_response(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/gone").respond_with_json({"error": "gone"}, status=404)
    out = request(httpserver.url_for("/gone"), allowFailed=True).run(FakeContext())
    assert out["code"] == 404
    assert out["body"] == {"error": "gone"}


def test_redirects_followed_unless_disabled(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/old").respond_with_data(
        "", status=302, headers={"Location": httpserver.url_for("/new")})
    httpserver.expect_request("/new").respond_with_data("new place")
    assert request(httpserver.url_for("/old")).run(FakeContext())["body"] == "new place"
    out = request(httpserver.url_for("/old"), allowFailed=True,
                  options={"followRedirects": False}).run(FakeContext())
    assert out["code"] == 302


def test_timeout_with_slow_handler(httpserver: HTTPServer) -> None:
    def slow(_: WRequest) -> WResponse:
        time.sleep(1.0)
        return WResponse("late")

    httpserver.expect_request("/slow").respond_with_handler(slow)
    task = request(httpserver.url_for("/slow") + "?q=1", options={"timeout": "PT0.2S"})
    started = time.monotonic()
    with pytest.raises(TaskFailure) as info:
        task.run(FakeContext())
    assert time.monotonic() - started < 0.9
    assert str(info.value) == (
        f"http.Request req: GET {httpserver.url_for('/slow')} timed out after PT0.2S"
    )


def test_connection_refused_is_one_line_without_secrets() -> None:
    uri = f"http://127.0.0.1:{closed_port()}/x?token={SECRET}"
    task = request(uri, headers={"X-Api-Key": SECRET}, options={"timeout": "PT2S"})
    with pytest.raises(TaskFailure) as info:
        task.run(FakeContext())
    message = str(info.value)
    assert message.startswith(f"http.Request req: GET {uri.split('?')[0]} failed: ConnectError")
    assert "\n" not in message
    assert SECRET not in message


def test_bad_uri_fails_the_task() -> None:
    with pytest.raises(TaskFailure, match="failed: UnsupportedProtocol"):
        request("ftp://example.invalid/file").run(FakeContext())


def test_unknown_method_and_option_rejected() -> None:
    with pytest.raises(ValidationError):
        request("http://x", method="FETCH")
    with pytest.raises(ValidationError):
        request("http://x", options={"timeout": "30s"})
    with pytest.raises(ValidationError):
        request("http://x", options={"retries": 3})


# --- helpers ---------------------------------------------------------------------------


def test_client_shared_per_option_set_and_thread_safe() -> None:
    options = HttpOptions(timeout=timedelta(seconds=7.5))
    seen: list[object] = []
    barrier = threading.Barrier(8)

    def grab() -> None:
        barrier.wait()
        seen.append(get_client(HttpOptions(timeout=timedelta(seconds=7.5))))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(c) for c in seen}) == 1
    assert get_client(options) is seen[0]
    assert get_client(HttpOptions(timeout=timedelta(seconds=7.5), followRedirects=False)) \
        is not seen[0]
    assert get_client(HttpOptions()) is not seen[0]


@pytest.mark.parametrize(
    ("url", "with_path", "without_path"),
    [
        ("https://u:pw@api.x.com:8443/a/b?k=v#f", "https://api.x.com:8443/a/b",
         "https://api.x.com:8443"),
        ("https://hooks.slack.com/services/T0/B0/XYZ", "https://hooks.slack.com/services/T0/B0/XYZ",
         "https://hooks.slack.com"),
        ("not a url?secret=1", "not a url", "<invalid URL>"),
    ],
)
def test_public_url(url: str, with_path: str, without_path: str) -> None:
    assert public_url(url) == with_path
    assert public_url(url, path=False) == without_path


def test_encode_body() -> None:
    from datetime import date

    assert encode_body(None) == (None, None)
    assert encode_body({"d": date(2024, 1, 2), "é": 1}) == (
        '{"d": "2024-01-02", "é": 1}'.encode(), "application/json")
    assert encode_body(5) == (b"5", "application/json")
    with pytest.raises(TypeError):
        encode_body({"x": object()})


# --- notify ----------------------------------------------------------------------------


def test_webhook_posts_dict_payload_as_json(httpserver: HTTPServer) -> None:
    httpserver.expect_request(
        "/hook", method="POST", json={"order": 9, "msg": "big"}, headers={"X-Sig": "abc"}
    ).respond_with_data("", status=204)
    task = parse_task({
        "id": "hook", "type": "notify.Webhook", "url": httpserver.url_for("/hook"),
        "payload": {"order": "{{ n }}", "msg": "big"}, "headers": {"X-Sig": "abc"},
    })
    assert task.run(FakeContext({"n": 9})) == {"code": 204}


def test_webhook_string_payload_sent_verbatim(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook", method="POST", data="order 9 failed").respond_with_data("")
    task = parse_task({"id": "hook", "type": "notify.Webhook", "url": httpserver.url_for("/hook"),
                       "payload": "order {{ n }} failed"})
    task.run(FakeContext({"n": 9}))
    assert last_request(httpserver).headers["Content-Type"].startswith("text/plain")


def test_slack_text_becomes_text_json(httpserver: HTTPServer) -> None:
    httpserver.expect_request(
        "/services/T0/B0/XYZ", method="POST", json={"text": "big order 12"},
        headers={"Content-Type": "application/json"},
    ).respond_with_data("ok")
    task = parse_task({"id": "slack", "type": "notify.Slack",
                       "url": "{{ hook }}", "text": "big order {{ n }}"})
    out = task.run(FakeContext({"hook": httpserver.url_for("/services/T0/B0/XYZ"), "n": 12}))
    assert out == {"code": 200}


def test_slack_payload_sent_as_given(httpserver: HTTPServer) -> None:
    blocks = {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]}
    httpserver.expect_request("/s", method="POST", json=blocks).respond_with_data("ok")
    task = parse_task({"id": "slack", "type": "notify.Slack", "url": httpserver.url_for("/s"),
                       "payload": blocks})
    assert task.run(FakeContext()) == {"code": 200}


def test_slack_error_shows_only_scheme_and_host(httpserver: HTTPServer) -> None:
    path = f"/services/T0/B0/{SECRET}"
    httpserver.expect_request(path).respond_with_data("no_service", status=404)
    task = parse_task({"id": "slack", "type": "notify.Slack", "url": httpserver.url_for(path),
                       "text": "hi"})
    with pytest.raises(TaskFailure) as info:
        task.run(FakeContext())
    host = httpserver.url_for("/").rstrip("/")
    assert str(info.value) == f"notify.Slack slack: POST {host} answered 404: no_service"


def test_notify_connection_error_hides_url_path() -> None:
    url = f"http://127.0.0.1:{closed_port()}/services/{SECRET}"
    task = parse_task({"id": "w", "type": "notify.Webhook", "url": url, "payload": {"a": 1}})
    with pytest.raises(TaskFailure) as info:
        task.run(FakeContext())
    message = str(info.value)
    assert message.startswith("notify.Webhook w: POST http://127.0.0.1:")
    assert "failed: ConnectError" in message
    assert SECRET not in message and "/services" not in message


@pytest.mark.parametrize("props", [{}, {"text": "a", "payload": {"text": "b"}}])
def test_slack_needs_exactly_one_of_text_and_payload(props: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="exactly one of text and payload"):
        parse_task({"id": "s", "type": "notify.Slack", "url": "https://h", **props})


def test_protocol_error_does_not_echo_header_values(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/h").respond_with_data("ok")
    task = request(httpserver.url_for("/h"), headers={"X-Key": f"{SECRET}\r\nInjected: 1"})
    with pytest.raises(TaskFailure) as info:
        task.run(FakeContext())
    message = str(info.value)
    assert "failed: LocalProtocolError" in message
    assert SECRET not in message and "\n" not in message
