"""A real SMTP server for the tests: ``aiosmtpd`` on a free loopback port, with STARTTLS (a
self-signed certificate for 127.0.0.1 made here with ``cryptography``) and AUTH
(PLAIN/LOGIN, only over TLS), keeping every message it accepted.

``smtp_server`` (function scope) yields a :class:`SmtpServer`: ``.port``, ``.cafile`` (the
certificate to trust), ``.user``/``.password``, ``.messages`` (parsed ``EmailMessage``s with
their envelope recipients) and ``.stop()`` to take the server down mid-test.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from waxflow.connectors.broker import free_port

USER = "alerts@example.org"
PASSWORD = "smtp-Secret-99"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files of a self-signed certificate for 127.0.0.1/localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@dataclass
class Received:
    message: EmailMessage
    rcpt: list[str]
    mail_from: str


@dataclass
class _Handler:
    messages: list[Received] = field(default_factory=list)
    event: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.original_content or envelope.content,
                                          policy=email.policy.default)
        with self.event:
            self.messages.append(Received(parsed, list(envelope.rcpt_tos),  # type: ignore[arg-type]
                                          envelope.mail_from))
            self.event.notify_all()
        return "250 OK"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                   data: Any) -> AuthResult:
    ok = (isinstance(data, LoginPassword) and data.login.decode() == USER
          and data.password.decode() == PASSWORD)
    return AuthResult(success=ok, handled=False)


class SmtpServer:
    def __init__(self, directory: Path) -> None:
        self.cafile, keyfile = self_signed(directory)
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(self.cafile, keyfile)
        self.handler = _Handler()
        self.port = free_port()
        self.user, self.password = USER, PASSWORD
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, tls_context=self.tls,
            require_starttls=True, auth_required=True, auth_require_tls=True,
            authenticator=_authenticator)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list[Received]:
        return list(self.handler.messages)

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        with self.handler.event:
            self.handler.event.wait_for(lambda: len(self.handler.messages) >= count, timeout)
        return self.messages


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
