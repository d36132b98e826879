"""Notifications: ``notify.Webhook`` (any JSON or text payload) and ``notify.Slack``.

Both POST through the shared client of :mod:`waxflow.connectors.http`. Their URLs often hold a
secret (a Slack incoming-webhook URL is one), so messages show only the URL's scheme and
host, never its path, query or the request headers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from waxflow.connectors.http import (
    Headers,
    HttpOptions,
    check_status,
    encode_body,
    merged_headers,
    public_url,
    send,
)
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

__all__ = ["Slack", "Webhook"]

_OPTIONS = HttpOptions()


def _post(
    ctx: RunContext,
    who: str,
    *,
    url_template: str,
    body: Any,
    headers: dict[str, Any],
    content_type: str | None = None,
) -> dict[str, Any]:
    """Render the URL, POST ``body`` (already rendered), fail on a non-2xx status."""
    url = str(ctx.render(url_template))
    shown = public_url(url, path=False)
    try:
        content, derived = encode_body(body)
    except TypeError as exc:
        raise TaskFailure(f"{who}: payload cannot be sent as JSON: {exc}") from None
    sent_headers = merged_headers(headers, content_type, override=True)
    sent_headers = merged_headers(sent_headers, derived)
    response = send(
        who=who,
        method="POST",
        url=url,
        shown_url=shown,
        headers=sent_headers,
        content=content,
        options=_OPTIONS,
    )
    check_status(who, "POST", shown, response)
    return {"code": response.status_code}


@task_type("notify.Webhook")
class Webhook(TaskBase):
    """POST ``payload`` (rendered) to ``url`` (rendered) with ``headers`` (rendered).

    A dict or list payload is sent as JSON; a string as is (typed JSON when it parses as
    JSON, else text, unless a ``Content-Type`` header says otherwise); no payload sends an
    empty body. A non-2xx answer, a timeout (30 s per operation) or a connection error fails
    the task. Outputs ``{"code": <status>}``.
    """

    type: Literal["notify.Webhook"] = Field(description="the task type")
    url: str = Field(description="URL to POST to (rendered); messages show only its scheme "
                                 "and host")
    payload: str | dict[str, Any] | list[Any] | None = Field(
        default=None,
        description="body (rendered): a map or list is sent as JSON, a string as is; default "
                    "an empty body")
    headers: Headers

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        headers = ctx.render(self.headers) if self.headers else {}
        body = ctx.render(self.payload)
        return _post(ctx, f"notify.Webhook {self.id}", url_template=self.url, body=body,
                     headers=headers)


@task_type("notify.Slack")
class Slack(TaskBase):
    """Post to a Slack incoming webhook: ``text`` becomes ``{"text": ...}``, or ``payload``
    (a JSON string or a mapping, e.g. with ``blocks``) is sent as is.

    Exactly one of ``text`` and ``payload`` must be given. A non-2xx answer fails the task
    (Slack's reason, such as ``invalid_payload``, is quoted). Outputs ``{"code": <status>}``.
    """

    type: Literal["notify.Slack"] = Field(description="the task type")
    url: str = Field(description="Slack incoming-webhook URL (rendered); a secret: write "
                                 "`{{ secret('NAME') }}`")
    text: str | None = Field(default=None,
                             description="message text (rendered), sent as `{\"text\": ...}`")
    payload: str | dict[str, Any] | None = Field(
        default=None,
        description="whole message (rendered): a JSON string or a map, such as one with "
                    "`blocks`; give it or `text`")

    @model_validator(mode="after")
    def _one_of_text_payload(self) -> Slack:
        if (self.text is None) == (self.payload is None):
            raise ValueError("give exactly one of text and payload")
        return self

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        if self.text is not None:
            rendered = ctx.render(self.text)
            body: Any = {"text": "" if rendered is None else str(rendered)}
        else:
            body = ctx.render(self.payload)
        return _post(ctx, f"notify.Slack {self.id}", url_template=self.url, body=body,
                     headers={}, content_type="application/json")
