"""notify.Email against a real SMTP server (aiosmtpd with STARTTLS and AUTH, see
tests/smtp_server.py): the message that arrives, and the errors and retries when the login is
refused or the server is down."""

from __future__ import annotations

import functools
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

import waxflow.connectors.email  # noqa: F401  (registers notify.Email)
from tests.smtp_server import SmtpServer, smtp_server  # noqa: F401  (fixture)
from tests.task_helpers import FakeContext, resolve_task_union
from waxflow.connectors.storage import Storage
from waxflow.tasks import TaskFailure

pytestmark = pytest.mark.integration


@functools.cache
def _tasks() -> TypeAdapter[Any]:
    return TypeAdapter(resolve_task_union())


def parse_task(data: dict[str, Any]) -> Any:
    """A task model from its YAML mapping (the task union is built once per module)."""
    return _tasks().validate_python(data)


def _task(server: SmtpServer, **props: Any) -> Any:
    base = {"id": "mail", "type": "notify.Email", "host": "127.0.0.1", "port": server.port,
            "username": server.user, "password": server.password,
            "trustedCertificates": str(server.cafile), "from": "Waxflow <waxflow@example.org>",
            "to": "ops@example.org; lead@example.org", "cc": ["audit@example.org"],
            "bcc": "hidden@example.org",
            "subject": "batch {{ trigger.messagesCount }} records failed",
            "plainTextContent": "Execution {{ execution.id }} failed.",
            "htmlTextContent": "<p>Execution <b>{{ execution.id }}</b> failed.</p>",
            "attachments": ["{{ trigger.uri }}",
                            {"uri": "{{ outputs.q.uri }}", "name": "rows.ion"}]}
    return parse_task({**base, **props})


def _ctx(tmp_path: Path) -> FakeContext:
    storage = Storage(str(tmp_path / "storage"))
    batch, _ = storage.put_records("batch.ion", [{"value": {"id": 1}}, {"value": {"id": 2}}])
    rows, _ = storage.put_records("rows.ion", [{"n": 2}])
    return FakeContext({"trigger": {"uri": batch, "messagesCount": 2},
                        "execution": {"id": "exec-42"}, "outputs": {"q": {"uri": rows}}})


def test_email_arrives_with_recipients_bodies_and_attachments(
        smtp_server: SmtpServer, tmp_path: Path) -> None:  # noqa: F811
    ctx = _ctx(tmp_path)
    out = _task(smtp_server).run(ctx)
    assert out["recipients"] == 4 and out["subject"] == "batch 2 records failed"
    (got,) = smtp_server.wait_for(1)
    msg = got.message
    assert sorted(got.rcpt) == ["audit@example.org", "hidden@example.org", "lead@example.org",
                                "ops@example.org"]
    assert got.mail_from == "waxflow@example.org"
    assert msg["Subject"] == "batch 2 records failed"
    assert msg["To"] == "ops@example.org, lead@example.org" and msg["Cc"] == "audit@example.org"
    assert msg["Bcc"] is None  # blind copies are not written in the headers
    assert msg["Message-ID"] == out["messageId"]
    body = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert body is not None and body.get_content().strip() == "Execution exec-42 failed."
    assert html is not None and "<b>exec-42</b>" in html.get_content()
    files = {part.get_filename(): part for part in msg.iter_attachments()}
    assert set(files) == {"batch.ion", "rows.ion"}
    stored = (tmp_path / "storage" / "batch.ion").read_bytes()
    assert files["batch.ion"].get_content() == stored
    assert files["batch.ion"].get_content_type() == "application/ion"


def test_smtps_and_plain_text_only(smtp_server: SmtpServer, tmp_path: Path) -> None:  # noqa: F811
    # the STARTTLS server does not speak TLS from the first byte: a clear TLS error
    with pytest.raises(TaskFailure, match=r"TLS with SMTP server 127\.0\.0\.1:\d+ failed"):
        _task(smtp_server, transportStrategy="SMTPS").run(_ctx(tmp_path))
    # an untrusted self-signed certificate is refused unless trusted
    with pytest.raises(TaskFailure, match="CERTIFICATE_VERIFY_FAILED"):
        _task(smtp_server, trustedCertificates=None).run(_ctx(tmp_path))
    _task(smtp_server, trustedCertificates=None, verifyServerIdentity=False,
          htmlTextContent=None, attachments=[]).run(_ctx(tmp_path))
    (got,) = smtp_server.wait_for(1)
    assert got.message.get_content_type() == "text/plain"


def test_refused_login_is_clear_and_never_shows_the_password(
        smtp_server: SmtpServer, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(TaskFailure) as info:
        _task(smtp_server, password="not-the-Password-7").run(_ctx(tmp_path))
    text = str(info.value)
    assert "refused the login of alerts@example.org: 535" in text
    assert "not-the-Password-7" not in text
    assert smtp_server.messages == []


FLOW = """
id: mail-retry
namespace: tests
triggers:
  - {{id: t, type: kafka.RealtimeTrigger, topic: x, groupId: g, valueDeserializer: JSON}}
tasks:
  - id: mail
    type: notify.Email
    host: 127.0.0.1
    port: {port}
    username: {user}
    password: "{{{{ secret('SMTP_PASSWORD') }}}}"
    trustedCertificates: {ca}
    from: waxflow@example.org
    to: ops@example.org
    subject: "order {{{{ trigger.value.id }}}}"
    plainTextContent: "amount {{{{ trigger.value.amount }}}}"
    retry: {{type: constant, interval: PT1S, maxAttempts: 5}}
"""


def test_server_down_fails_the_attempt_and_the_retry_delivers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from waxflow.dataflows.local_run import run_jsonl
    from waxflow.dataflows.spec import parse_flow

    server = SmtpServer(tmp_path)  # not started yet: the first attempt finds nobody listening
    flow_file = tmp_path / "flow.yaml"
    flow_file.write_text(FLOW.format(port=server.port, user=server.user, ca=server.cafile))
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"value": {"id": 7, "amount": 12}}) + "\n")
    monkeypatch.setenv("WAXFLOW_SECRET_SMTP_PASSWORD", server.password)
    flow = parse_flow(flow_file)
    starter = threading.Timer(1.5, server.start)
    starter.start()
    try:
        began = time.monotonic()
        docs = run_jsonl(flow, records)
        elapsed = time.monotonic() - began
        (got,) = server.wait_for(1, timeout=10)
    finally:
        starter.join()
        server.stop()
    assert got.message["Subject"] == "order 7"
    assert got.message.get_content().strip() == "amount 12"
    (execution,) = [d for d in docs if d.get("terminal", True)][-1:]
    assert execution["state"] == "SUCCESS"
    (run,) = [t for t in execution["taskRuns"] if t["taskId"] == "mail"]
    attempts = run["attempts"]
    assert len(attempts) >= 2 and attempts[-1]["state"] == "SUCCESS", attempts
    first = str(attempts[0]["error"])
    assert "cannot send through SMTP server 127.0.0.1" in first
    assert "Connection refused" in first
    assert server.password not in json.dumps(docs)
    assert elapsed < 60
