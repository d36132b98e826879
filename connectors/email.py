"""Email: ``notify.Email`` sends one message over SMTP (Python's ``smtplib``).

Transport as Kestra's ``MailSend`` names it: ``SMTP_TLS`` (plain connection upgraded with
STARTTLS, the default; port 587), ``SMTPS`` (TLS from the first byte; port 465) or ``SMTP``
(no encryption; only for a relay on a trusted network). TLS verifies the server's certificate
and host name against the system's CAs, or ``trustedCertificates`` (a PEM file), unless
``verifyServerIdentity: false``. Login (``username``/``password``) happens only over TLS
unless the transport is ``SMTP``. One connection per message (SMTP servers drop idle ones).
The password never appears in messages (masked).
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, model_validator

from waxflow.connectors.storage import StorageError, read_bytes
from waxflow.durations import Duration
from waxflow.expressions import mask
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

__all__ = ["Attachment", "Email"]

Addresses = str | list[str] | None


class Attachment(BaseModel):
    """A file of internal storage attached to the message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(description="internal-storage URI of the file (rendered), such as "
                                 "`{{ trigger.uri }}` or `{{ outputs.query.uri }}`")
    name: str | None = Field(default=None, description="file name shown to the reader "
                                                       "(rendered); default the URI's")
    contentType: str | None = Field(
        default=None, description="MIME type; default guessed from the name (`.ion` files: "
                                  "`application/ion`)")


def _text(ctx: RunContext, template: str | None) -> str | None:
    """A rendered optional property: None when unset or rendered empty/none."""
    if template is None:
        return None
    value = ctx.render(template)
    return None if value is None or value == "" else str(value)


def _addresses(value: Any) -> list[str]:
    """Rendered ``to``/``cc``/``bcc`` as addresses: a list, or one string separated by
    commas or semicolons (Kestra's style)."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    text = ",".join(str(v).replace(";", ",") for v in items if v)
    return [addr for _, addr in getaddresses([text]) if addr]


@task_type("notify.Email", aliases=("io.kestra.plugin.notifications.mail.MailSend",
                                    "io.kestra.plugin.email.MailSend"))
class Email(TaskBase):
    """Send an email over SMTP.

    ``subject``, ``plainTextContent`` and ``htmlTextContent`` are templates (rendered);
    give one body or both (sent as ``multipart/alternative``: clients show the HTML).
    ``to``, ``cc`` and ``bcc`` take a list or one string separated by commas or semicolons;
    ``bcc`` recipients get the message but are not written in its headers. Attachments are
    files of internal storage (a batch file, a ``fetch: STORE`` result). Guarantees: the
    task succeeds only when the server accepted the message for every recipient; a refused
    login, a refused recipient, a TLS failure, a timeout or an unreachable server fails the
    attempt with a one-line message naming the server (``retry`` rides over transient
    ones). An SMTP server has no idempotency: a retry after a lost reply may send twice.
    Outputs ``messageId``, ``recipients`` (count) and ``subject``.
    """

    type: Literal["notify.Email"] = Field(description="the task type")
    host: str = Field(min_length=1, description="SMTP server host (rendered)")
    port: int | None = Field(default=None, ge=1, le=65535,
                             description="SMTP port; default 587 (SMTP_TLS), 465 (SMTPS), "
                                         "25 (SMTP)")
    transportStrategy: Literal["SMTP_TLS", "SMTPS", "SMTP"] = Field(
        default="SMTP_TLS",
        description="`SMTP_TLS`: STARTTLS upgrade (required: fails if the server does not "
                    "offer it); `SMTPS`: TLS from the start; `SMTP`: no encryption")
    username: str | None = Field(default=None, description="login user (rendered); no "
                                                           "login when unset")
    password: str | None = Field(
        default=None, description="login password (rendered), masked in every message; a "
                                  "secret: write `{{ secret('NAME') }}`")
    verifyServerIdentity: bool = Field(
        default=True, description="check the server's certificate and host name")
    trustedCertificates: str | None = Field(
        default=None, description="PEM file of CA certificates to trust instead of the "
                                  "system's (rendered), e.g. for an internal relay")
    from_: str = Field(alias="from", min_length=1,
                       description="sender address (rendered), e.g. `Alerts <a@x.org>`")
    to: Addresses = Field(default=None, description="recipients (rendered): a list, or "
                                                    "addresses separated by `,` or `;`")
    cc: Addresses = Field(default=None, description="carbon-copy recipients (rendered)")
    bcc: Addresses = Field(default=None, description="blind-copy recipients (rendered), "
                                                     "not written in the headers")
    replyTo: str | None = Field(default=None, description="`Reply-To` address (rendered)")
    subject: str = Field(default="", description="subject (rendered)")
    plainTextContent: str | None = Field(default=None,
                                         description="plain-text body (rendered)")
    htmlTextContent: str | None = Field(default=None, description="HTML body (rendered)")
    attachments: list[str | Attachment] = Field(
        default_factory=list,
        description="internal-storage files to attach: URIs (rendered) or "
                    "`{uri, name, contentType}`")
    sessionTimeout: Duration = Field(
        default=dt.timedelta(seconds=30),
        description="longest wait for each network operation with the server")

    model_config = {**TaskBase.model_config, "populate_by_name": True}

    @model_validator(mode="after")
    def _some_recipient_and_body(self) -> Email:
        if not (self.to or self.cc or self.bcc):
            raise ValueError("give at least one recipient in to, cc or bcc")
        if self.plainTextContent is None and self.htmlTextContent is None:
            raise ValueError("give plainTextContent, htmlTextContent or both")
        return self

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        who = f"notify.Email {self.id}"
        host = str(ctx.render(self.host))
        port = self.port or {"SMTP_TLS": 587, "SMTPS": 465, "SMTP": 25}[self.transportStrategy]
        password = _text(ctx, self.password)
        secrets = [password]
        msg, recipients = self._message(ctx, who, host)
        where = f"SMTP server {host}:{port}"
        try:
            self._send(ctx, host, port, password, msg, recipients)
        except smtplib.SMTPAuthenticationError as exc:
            raise TaskFailure(f"{who}: {where} refused the login of "
                              f"{_text(ctx, self.username)}: {_reply(exc, secrets)}") from None
        except smtplib.SMTPRecipientsRefused as exc:
            refused = "; ".join(f"{addr}: {_reply(err, secrets)}"
                                for addr, err in exc.recipients.items())
            raise TaskFailure(f"{who}: {where} refused the recipient(s) {refused}") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise TaskFailure(f"{who}: {where}: {mask(str(exc), secrets)}") from None
        except smtplib.SMTPResponseException as exc:
            raise TaskFailure(f"{who}: {where} answered {_reply(exc, secrets)}") from None
        except ssl.SSLError as exc:
            raise TaskFailure(f"{who}: TLS with {where} failed: "
                              f"{mask(str(exc), secrets)}") from None
        except TimeoutError:
            raise TaskFailure(f"{who}: {where} did not answer within "
                              f"{self.sessionTimeout.total_seconds():g}s") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TaskFailure(f"{who}: cannot send through {where}: "
                              f"{mask(str(exc) or type(exc).__name__, secrets)}") from None
        ctx.log("INFO", f"sent {msg['Subject']!r} to {len(recipients)} recipient(s) "
                        f"through {host}:{port}")
        return {"messageId": msg["Message-ID"], "recipients": len(recipients),
                "subject": msg["Subject"]}

    def _message(self, ctx: RunContext, who: str, host: str) -> tuple[EmailMessage, list[str]]:
        """The message and its envelope recipients (to + cc + bcc, duplicates dropped)."""
        to, cc, bcc = (_addresses(ctx.render(v)) for v in (self.to, self.cc, self.bcc))
        recipients = list(dict.fromkeys(to + cc + bcc))
        if not recipients:
            raise TaskFailure(f"{who}: no recipient: to, cc and bcc rendered empty")
        msg = EmailMessage()
        sender = str(ctx.render(self.from_))
        msg["From"] = sender
        if to:
            msg["To"] = ", ".join(to)
        if cc:
            msg["Cc"] = ", ".join(cc)
        reply_to = _text(ctx, self.replyTo)
        if reply_to:
            msg["Reply-To"] = reply_to
        msg["Subject"] = " ".join(str(ctx.render(self.subject) or "").split())
        msg["Date"] = formatdate(localtime=False)
        domain = sender.rpartition("@")[2].strip("> ") or host
        msg["Message-ID"] = make_msgid(domain=domain)
        text = ctx.render(self.plainTextContent) if self.plainTextContent is not None else None
        html = ctx.render(self.htmlTextContent) if self.htmlTextContent is not None else None
        if text is not None:
            msg.set_content(str(text))
            if html is not None:
                msg.add_alternative(str(html), subtype="html")
        else:
            msg.set_content(str(html), subtype="html")
        for item in self.attachments:
            self._attach(ctx, who, msg, item)
        return msg, recipients

    def _attach(self, ctx: RunContext, who: str, msg: EmailMessage,
                item: str | Attachment) -> None:
        spec = item if isinstance(item, Attachment) else Attachment(uri=item)
        uri = str(ctx.render(spec.uri))
        try:
            data = read_bytes(uri)
        except StorageError as exc:
            raise TaskFailure(f"{who}: attachment {exc}") from None
        except OSError as exc:
            raise TaskFailure(f"{who}: cannot read attachment {uri}: {exc}") from None
        name = _text(ctx, spec.name) or Path(urlparse(uri).path).name
        kind = spec.contentType or ("application/ion" if name.endswith(".ion") else
                                    mimetypes.guess_type(name)[0]) or "application/octet-stream"
        maintype, _, subtype = kind.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=name)

    def _tls(self, ctx: RunContext) -> ssl.SSLContext:
        cafile = _text(ctx, self.trustedCertificates)
        context = ssl.create_default_context(cafile=cafile)
        if not self.verifyServerIdentity:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _send(self, ctx: RunContext, host: str, port: int, password: str | None,
              msg: EmailMessage, recipients: list[str]) -> None:
        timeout = self.sessionTimeout.total_seconds()
        server: smtplib.SMTP
        if self.transportStrategy == "SMTPS":
            server = smtplib.SMTP_SSL(host, port, timeout=timeout, context=self._tls(ctx))
        else:
            server = smtplib.SMTP(host, port, timeout=timeout)
        with server:
            if self.transportStrategy == "SMTP_TLS":
                server.starttls(context=self._tls(ctx))  # SMTPNotSupportedError if not offered
            username = _text(ctx, self.username)
            if username:
                server.login(username, password or "")
            refused = server.send_message(msg, to_addrs=recipients)
            if refused:  # some (not all) recipients refused: the message did not reach them
                raise smtplib.SMTPRecipientsRefused(refused)


def _reply(exc: Any, secrets: list[str | None]) -> str:
    """An SMTP error reply as ``<code> <text>`` on one line."""
    code = getattr(exc, "smtp_code", None)
    text = getattr(exc, "smtp_error", b"")
    if isinstance(exc, tuple):
        code, text = exc[0], exc[1]
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return mask(f"{code} {text}" if code else str(exc), secrets)
