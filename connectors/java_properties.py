"""Kafka security settings written for the Java client, translated for librdkafka.

Kestra's Kafka plugin passes ``properties`` to the Java client, so our users' flows carry
Java settings that librdkafka refuses ("Java JAAS configuration is not supported", "No such
configuration property"). :func:`translate` rewrites the ones with a librdkafka equivalent,
once, when a client's settings are built:

- ``sasl.jaas.config`` with ``PlainLoginModule`` or ``ScramLoginModule``: its ``username``
  and ``password`` become ``sasl.username`` / ``sasl.password`` (the password is masked like
  every secret). Other login modules are refused in one line saying what to set instead.
- ``ssl.keystore.location`` (``ssl.keystore.type`` PKCS12) stays: librdkafka reads PKCS#12
  keystores. Kestra also accepts the keystore's content base64-encoded in place of a path
  (its documented SSL example): such a value is decoded into a private file (mode 0600 in a
  0700 directory of this process, removed at exit). A JKS keystore is refused (convert it:
  ``keytool -importkeystore -deststoretype PKCS12``).
- ``ssl.truststore.location`` (type PKCS12 or PEM, a path or base64 content) becomes
  ``ssl.ca.location``: a PKCS#12 truststore's certificates are written out as PEM (JKS is
  refused with the ``keytool`` command that converts it); ``ssl.truststore.password`` and
  ``ssl.truststore.type`` are dropped.
- ``ssl.keystore.certificate.chain`` / ``ssl.keystore.key`` / ``ssl.truststore.certificates``
  (Java's PEM-in-a-string settings) become ``ssl.certificate.pem`` / ``ssl.key.pem`` /
  ``ssl.ca.pem``; ``ssl.keystore.type``/``ssl.truststore.type`` PEM are dropped.

Settings librdkafka already shares with Java (``security.protocol``, ``sasl.mechanism``,
``ssl.endpoint.identification.algorithm``, ``ssl.keystore.password``...) pass unchanged.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from waxflow.errors import WaxflowError
from waxflow.expressions import register_secret


class JavaPropertyError(WaxflowError, ValueError):
    """A Java client setting with no librdkafka equivalent; the message says what to set."""


_JAAS = re.compile(r"^\s*([\w.$]+)\s+(required|requisite|sufficient|optional)\s*(.*?);?\s*$",
                   re.S)
_OPTION = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|(\S+?))(?=\s|;|$)')
_PASSWORD_MODULES = ("PlainLoginModule", "ScramLoginModule")


def translate(conf: Mapping[str, Any]) -> dict[str, Any]:
    """``conf`` with its Java-only security settings rewritten for librdkafka (module doc);
    raises :class:`JavaPropertyError` for one that cannot be."""
    out = dict(conf)
    if "sasl.jaas.config" in out:
        out.update(_jaas(str(out.pop("sasl.jaas.config"))))
    pem = {"ssl.keystore.certificate.chain": "ssl.certificate.pem",
           "ssl.keystore.key": "ssl.key.pem", "ssl.truststore.certificates": "ssl.ca.pem"}
    for java, native in pem.items():
        if java in out:
            out[native] = out.pop(java)
    keystore_type = str(out.pop("ssl.keystore.type", "PKCS12")).upper()
    if "ssl.keystore.location" in out:
        if keystore_type == "JKS":
            raise JavaPropertyError(
                "properties.ssl.keystore.type JKS: librdkafka reads PKCS#12 keystores only; "
                "convert it (keytool -importkeystore -srckeystore KS.jks -destkeystore "
                "KS.p12 -deststoretype PKCS12) and set ssl.keystore.type: PKCS12")
        out["ssl.keystore.location"] = _file(str(out["ssl.keystore.location"]),
                                             "ssl.keystore.location", ".p12")
    truststore_type = str(out.pop("ssl.truststore.type", "PKCS12")).upper()
    password = out.pop("ssl.truststore.password", None)
    if "ssl.truststore.location" in out:
        where = str(out.pop("ssl.truststore.location"))
        if truststore_type == "PEM":
            out["ssl.ca.location"] = _file(where, "ssl.truststore.location", ".pem")
        elif truststore_type == "JKS":
            raise JavaPropertyError(
                "properties.ssl.truststore.type JKS: librdkafka reads CA certificates as PEM; "
                "export them (keytool -exportcert -rfc -keystore TS.jks -alias CA > ca.pem) "
                "and set ssl.ca.location, or give a PKCS12 truststore")
        else:
            store = Path(_file(where, "ssl.truststore.location", ".p12")).read_bytes()
            out["ssl.ca.location"] = _pkcs12_cas(store, None if password is None
                                                 else str(password))
    return out


def _jaas(text: str) -> dict[str, str]:
    match = _JAAS.match(text)
    if match is None:
        raise JavaPropertyError("properties.sasl.jaas.config: expected "
                                "'<LoginModule class> required key=\"value\" ...;'")
    module, options = match.group(1), match.group(3)
    if not module.endswith(_PASSWORD_MODULES):
        raise JavaPropertyError(
            f"properties.sasl.jaas.config: {module.rsplit('.', 1)[-1]} has no librdkafka "
            "equivalent in a JAAS line: set librdkafka's own settings instead (OAUTHBEARER: "
            "sasl.oauthbearer.method, sasl.oauthbearer.client.id, ...; GSSAPI is not built "
            "into this client)")
    values = {m.group(1): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _OPTION.finditer(options)}
    values = {k: re.sub(r"\\(.)", r"\1", v) for k, v in values.items()}
    missing = [k for k in ("username", "password") if not values.get(k)]
    if missing:
        raise JavaPropertyError(f"properties.sasl.jaas.config: {module.rsplit('.', 1)[-1]} "
                                f"needs {' and '.join(missing)}=\"...\"")
    register_secret(values["password"])
    return {"sasl.username": values["username"], "sasl.password": values["password"]}


class _Files:
    """Decoded stores and extracted CA files of this process (0700 directory, gone at exit)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dir: Path | None = None

    def write(self, data: bytes, suffix: str) -> str:
        with self.lock:
            if self.dir is None:
                self.dir = Path(tempfile.mkdtemp(prefix="waxflow-tls-"))
                atexit.register(shutil.rmtree, self.dir, True)
            path = self.dir / (hashlib.sha256(data).hexdigest()[:20] + suffix)
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fp:
                    fp.write(data)
            return str(path)


_FILES = _Files()


def _file(value: str, key: str, suffix: str) -> str:
    """A path to the store ``value`` names: the path itself, or a file holding its
    base64-decoded content (Kestra's way of passing a store inline)."""
    if os.path.exists(value):
        return value
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if not data:
        raise JavaPropertyError(f"properties.{key}: {value[:60]!r} is neither a file nor "
                                "base64-encoded content")
    return _FILES.write(data, suffix)


def _pkcs12_cas(store: bytes, password: str | None) -> str:
    """The certificates of a PKCS#12 truststore as one PEM file (its path)."""
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

    try:
        parsed = pkcs12.load_pkcs12(store, password.encode() if password else None)
    except ValueError as exc:
        raise JavaPropertyError(
            "properties.ssl.truststore.location: not a PKCS12 store that "
            f"ssl.truststore.password opens ({exc}); a JKS store (Java's default type): "
            "export its CA (keytool -exportcert -rfc ...) and set ssl.ca.location") from None
    certs = [c.certificate for c in parsed.additional_certs]
    if parsed.cert is not None:
        certs.insert(0, parsed.cert.certificate)
    if not certs:
        raise JavaPropertyError("properties.ssl.truststore.location: the PKCS12 store holds "
                                "no certificate")
    return _FILES.write(b"".join(c.public_bytes(Encoding.PEM) for c in certs), ".pem")
