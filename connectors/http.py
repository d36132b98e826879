"""HTTP: the ``http.Request`` task and the shared client helpers the notification tasks use.

One ``httpx.Client`` per process and option set, created lazily and reused by every task
(connection pooling; ``httpx.Client`` is safe to share between threads). Error messages are
single lines and never contain request headers, query strings or URL credentials.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from waxflow.durations import Duration, format_duration
from waxflow.expressions import mask
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

__all__ = [
    "Headers",
    "HttpOptions",
    "Request",
    "check_status",
    "encode_body",
    "get_client",
    "public_url",
    "send",
]

_SNIPPET = 200

#: The type of a ``headers`` property: values rendered, never shown in messages.
Headers = Annotated[dict[str, str], Field(
    default_factory=dict,
    description="request headers, by name (values rendered); never shown in messages")]


class HttpOptions(BaseModel):
    """Client options. ``timeout`` bounds each network operation (connect, write, each read,
    pool wait), not the whole exchange: the task's own ``timeout`` does that."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: Duration = Field(
        default=dt.timedelta(seconds=30),
        description="longest wait for each network operation: connecting, sending, each read "
                    "of the response, a free pooled connection (ISO-8601 duration)")
    followRedirects: bool = Field(
        default=True, description="follow 3xx redirects; false outputs the 3xx response")


_CLIENTS: dict[tuple[int, float, bool], httpx.Client] = {}
_CLIENTS_LOCK = threading.Lock()


def get_client(options: HttpOptions) -> httpx.Client:
    """The process's shared client for ``options`` (a new process gets its own clients)."""
    key = (os.getpid(), options.timeout.total_seconds(), options.followRedirects)
    client = _CLIENTS.get(key)
    if client is None:
        with _CLIENTS_LOCK:
            client = _CLIENTS.get(key)
            if client is None:
                client = httpx.Client(
                    timeout=options.timeout.total_seconds(),
                    follow_redirects=options.followRedirects,
                )
                _CLIENTS[key] = client
    return client


def public_url(url: str, *, path: bool = True) -> str:
    """The part of ``url`` safe to show: scheme, host, port and (when ``path``) the path.

    Credentials (``user:pass@``), query string and fragment are always dropped.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or not parts.scheme or not parts.netloc:
        if not path:
            return "<invalid URL>"
        return url.split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path if path else ''}"


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def encode_body(value: Any) -> tuple[bytes | None, str | None]:
    """Encode a rendered body; returns ``(content, default content type)``.

    ``None`` → no body. A string is sent as UTF-8, typed ``application/json`` when it parses
    as JSON, else ``text/plain``. Anything else (dict, list, number, bool) is sent as JSON;
    dates become ISO strings, decimals and UUIDs strings. Raises ``TypeError`` otherwise.
    """
    if value is None:
        return None, None
    if isinstance(value, bytes):
        return value, "application/octet-stream"
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value.encode(), "text/plain; charset=utf-8"
        return value.encode(), "application/json"
    text = json.dumps(value, default=_json_default, ensure_ascii=False)
    return text.encode(), "application/json"


def send(
    *,
    who: str,
    method: str,
    url: str,
    shown_url: str,
    headers: Mapping[str, str],
    content: bytes | None,
    options: HttpOptions,
) -> httpx.Response:
    """Send one request with the shared client and read the whole response.

    Timeouts, connection errors and invalid URLs raise :class:`TaskFailure` with the one-line
    message ``"<who>: <method> <shown_url> timed out after PT30S"`` or ``"... failed: <error>"``;
    the error text has the URL, its query and path, and the header values masked.
    """
    try:
        return get_client(options).request(method, url, headers=dict(headers), content=content)
    except httpx.TimeoutException:
        raise TaskFailure(
            f"{who}: {method} {shown_url} timed out after {format_duration(options.timeout)}"
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        secrets = _url_secrets(url, shown_url) + list(headers.values())
        detail = mask(f"{type(exc).__name__}: {exc}", secrets)
        raise TaskFailure(f"{who}: {method} {shown_url} failed: {detail}") from None


def _url_secrets(url: str, shown_url: str) -> list[str]:
    """Parts of ``url`` that ``shown_url`` does not show (masked in error text)."""
    secrets = [url]
    try:
        parts = urlsplit(url)
    except ValueError:
        return secrets
    secrets += [parts.query, parts.fragment, parts.netloc.rpartition("@")[0]]
    if parts.path not in shown_url:
        secrets.append(parts.path)
    return secrets


def check_status(who: str, method: str, shown_url: str, response: httpx.Response) -> None:
    """Raise :class:`TaskFailure` for a non-2xx response, quoting 200 characters of its body
    (on one line, registered secrets masked)."""
    if 200 <= response.status_code < 300:
        return
    snippet = mask(response.text[:_SNIPPET])
    raise TaskFailure(f"{who}: {method} {shown_url} answered {response.status_code}: {snippet}")


def merged_headers(
    headers: Mapping[str, Any], content_type: str | None, *, override: bool = False
) -> dict[str, str]:
    """Header values as strings, with ``Content-Type`` set to ``content_type`` when given and
    either ``override`` or no ``Content-Type`` header (any case) is present."""
    out = {str(k): str(v) for k, v in headers.items()}
    if not content_type:
        return out
    present = [k for k in out if k.lower() == "content-type"]
    if present and not override:
        return out
    for key in present:
        del out[key]
    out["Content-Type"] = content_type
    return out


def _response_body(response: httpx.Response) -> Any:
    media = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    is_json = media == "application/json" or media.endswith("+json")
    if is_json and response.content:
        try:
            return response.json()
        except ValueError:
            pass
    return response.text


@task_type("http.Request")
class Request(TaskBase):
    """Send an HTTP request and output the response.

    ``uri``, ``body``, ``contentType`` and ``headers`` are rendered. ``body``: a string is sent
    as is, a dict or list as JSON (dates as ISO-8601 text); ``contentType`` (else a
    ``Content-Type`` header, else the type derived from the body) sets the content type.
    A non-2xx answer fails the task unless ``allowFailed``; timeouts and connection errors
    always fail it. Outputs ``{"code": int, "headers": {lower-case name: value}, "body": ...}``
    where ``body`` is parsed JSON when the response is JSON, else text. Messages show the URI
    without query string or credentials, and never the request headers.
    """

    type: Literal["http.Request"] = Field(description="the task type")
    uri: str = Field(description="URL to request (rendered); messages show it without query "
                                 "string or credentials")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = Field(
        default="GET", description="HTTP method")
    body: str | dict[str, Any] | list[Any] | None = Field(
        default=None,
        description="request body (rendered): a string is sent as is, a map or list as JSON; "
                    "default no body")
    contentType: str | None = Field(
        default=None,
        description="`Content-Type` of the body (rendered); default a `Content-Type` header, "
                    "else `application/json` or `text/plain` from the body")
    headers: Headers
    options: HttpOptions = Field(default_factory=HttpOptions,
                                 description="client options: timeouts and redirects")
    allowFailed: bool = Field(
        default=False,
        description="output a non-2xx response instead of failing the task")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        uri = str(ctx.render(self.uri))
        who = f"http.Request {self.id}"
        shown = public_url(uri)
        try:
            content, derived = encode_body(ctx.render(self.body))
        except TypeError as exc:
            raise TaskFailure(f"{who}: body cannot be sent as JSON: {exc}") from None
        content_type = ctx.render(self.contentType) if self.contentType else None
        rendered = ctx.render(self.headers) if self.headers else {}
        explicit = str(content_type) if content_type else None
        headers = merged_headers(rendered, explicit, override=True)
        headers = merged_headers(headers, derived)
        response = send(
            who=who,
            method=self.method,
            url=uri,
            shown_url=shown,
            headers=headers,
            content=content,
            options=self.options,
        )
        if not self.allowFailed:
            check_status(who, self.method, shown, response)
        return {
            "code": response.status_code,
            "headers": dict(response.headers.items()),
            "body": _response_body(response),
        }
