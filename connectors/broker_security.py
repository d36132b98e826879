"""The secure mode of the local broker (``waxflow broker start --secure``): SASL_SSL + ACLs.

What a managed Kafka looks like to a client, on loopback:

- one client listener, ``SASL_SSL``, mechanism ``SCRAM-SHA-512``; its certificate is signed
  by a self-signed CA made (with the ``openssl`` command) on the first secure start and kept
  in ``<data dir>/secure/``; clients trust ``ca.pem`` (``ssl.ca.location``), and the
  certificate names ``localhost`` and ``127.0.0.1`` so hostname verification stays on;
- the controller listener is ``SASL_PLAINTEXT`` with ``PLAIN`` (SCRAM is not available to
  KRaft controllers) and only the admin user, so nothing on it is anonymous;
- SCRAM users live in the KRaft metadata: the admin (a super user; the broker itself also
  talks to itself as admin) is created by ``StorageTool format --add-scram``, further users
  through the AdminClient (:func:`add_user`);
- authorisation is KRaft's ``StandardAuthorizer``, no ACL means no access; :func:`grant`
  gives a user the operations a waxflow job needs on named topics, groups and
  transactional ids.

The admin's client settings (bootstrap, CA file, user, password) are written to
``<data dir>/secure/client.properties`` (mode 0600, librdkafka keys) and returned by
:meth:`SecureFiles.admin_conf`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waxflow.errors import WaxflowError

ADMIN_USER = "admin"
MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 4096
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


class SecurityError(WaxflowError, RuntimeError):
    """The secure broker's certificates, users or ACLs could not be set up."""


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise SecurityError("`openssl` not found on PATH: install the Debian package `openssl` "
                            "to make the secure broker's certificates")
    res = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["no error text"])[-1]
        raise SecurityError(f"openssl {args[0]} failed: {why[:300]}")


_EXT = """basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
"""


def make_certs(directory: Path, days: int = 825) -> None:
    """A self-signed CA (``ca.pem``) and a broker certificate it signed, for ``localhost`` and
    ``127.0.0.1``, as a PEM keystore (``broker-keystore.pem``: PKCS#8 key, then the chain).
    EC P-256 keys: made in milliseconds."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days),
             "-subj", "/CN=waxflow local CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    _openssl("req", "-new", *key, "-keyout", "broker.key", "-out", "broker.csr",
             "-subj", "/CN=localhost", cwd=directory)
    (directory / "broker.ext").write_text(_EXT)
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "broker.crt", "-days", str(days),
             "-extfile", "broker.ext", cwd=directory)
    keystore = directory / "broker-keystore.pem"
    keystore.write_bytes((directory / "broker.key").read_bytes()
                         + (directory / "broker.crt").read_bytes()
                         + (directory / "ca.pem").read_bytes())
    for name in ("ca.key", "broker.key", "broker-keystore.pem"):
        os.chmod(directory / name, 0o600)
    for name in ("broker.csr", "broker.ext", "ca.srl"):
        (directory / name).unlink(missing_ok=True)


def client_conf(bootstrap: str, user: str, password: str, ca_file: Path | str
                ) -> dict[str, str]:
    """librdkafka settings of a SCRAM-SHA-512 user of the secure broker."""
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_SSL",
            "sasl.mechanism": MECHANISM, "sasl.username": user, "sasl.password": password,
            "ssl.ca.location": str(ca_file)}


def read_properties(path: Path) -> dict[str, str]:
    """A ``key=value`` file (``#`` comments) as a dict."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


@dataclass
class SecureFiles:
    """The secure broker's files under ``<data dir>/secure``."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.directory / "broker-keystore.pem"

    @property
    def client_properties(self) -> Path:
        return self.directory / "client.properties"

    def exists(self) -> bool:
        return self.client_properties.exists()

    def admin_password(self) -> str:
        """The admin's password (made once, on the first secure start)."""
        if self.client_properties.exists():
            return read_properties(self.client_properties)["sasl.password"]
        return secrets.token_hex(16)

    def prepare(self, bootstrap: str) -> str:
        """Make what is missing (certificates, admin password) and (re)write the admin's
        client settings for ``bootstrap``; return the admin password."""
        password = self.admin_password()
        if not (self.ca_file.exists() and self.keystore.exists()):
            make_certs(self.directory)
        conf = client_conf(bootstrap, ADMIN_USER, password, self.ca_file)
        self.client_properties.touch(mode=0o600)
        os.chmod(self.client_properties, 0o600)
        self.client_properties.write_text(
            "# admin (super user) of the local secure broker; librdkafka settings\n"
            + "".join(f"{k}={v}\n" for k, v in conf.items()))
        return password

    def admin_conf(self) -> dict[str, str]:
        return read_properties(self.client_properties)

    def server_properties(self, port: int, controller_port: int, password: str) -> str:
        """The listener, SASL, TLS and authoriser lines of ``server.properties``."""
        scram = (f'org.apache.kafka.common.security.scram.ScramLoginModule required '
                 f'username="{ADMIN_USER}" password="{password}";')
        plain = (f'org.apache.kafka.common.security.plain.PlainLoginModule required '
                 f'username="{ADMIN_USER}" password="{password}" '
                 f'user_{ADMIN_USER}="{password}";')
        return "\n".join([
            f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=SASL_SSL",
            "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
            f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
            "sasl.mechanism.controller.protocol=PLAIN",
            f"listener.name.sasl_ssl.sasl.enabled.mechanisms={MECHANISM}",
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config={scram}",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            f"listener.name.controller.plain.sasl.jaas.config={plain}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.keystore}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.ca_file}",
            "ssl.client.auth=none",
            f"authorizer.class.name={AUTHORIZER}",
            f"super.users=User:{ADMIN_USER}",
            "allow.everyone.if.no.acl.found=false",
            "",
        ])

    @staticmethod
    def format_args(password: str) -> list[str]:
        """``StorageTool format`` arguments creating the admin's SCRAM credential."""
        return ["--add-scram", f"{MECHANISM}=[name={ADMIN_USER},password={password}]"]


def add_user(admin_conf: dict[str, Any], user: str, password: str) -> None:
    """Create (or reset the password of) a SCRAM-SHA-512 user."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient(admin_conf)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, info, password.encode())])
    for fut in futures.values():
        fut.result(timeout=30)


#: what a waxflow job does with each kind of resource
TOPIC_OPS = ("READ", "WRITE", "DESCRIBE", "CREATE")
GROUP_OPS = ("READ", "DESCRIBE", "ALTER_CONFIGS", "DESCRIBE_CONFIGS")
TXN_OPS = ("WRITE", "DESCRIBE")


def grant(admin_conf: dict[str, Any], user: str, *, topics: Iterable[str] = (),
          groups: Iterable[str] = (), transactional_ids: Iterable[str] = (),
          prefixed: bool = False, topic_ops: Iterable[str] = TOPIC_OPS,
          group_ops: Iterable[str] = GROUP_OPS) -> None:
    """ALLOW ``user`` the given operations on topics, groups (consumer or share) and
    transactional ids (names are literal, or prefixes when ``prefixed``)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    pattern = ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL
    bindings = [
        AclBinding(kind, name, pattern, f"User:{user}", "*", getattr(AclOperation, op),
                   AclPermissionType.ALLOW)
        for kind, names, ops in ((ResourceType.TOPIC, list(topics), list(topic_ops)),
                                 (ResourceType.GROUP, list(groups), list(group_ops)),
                                 (ResourceType.TRANSACTIONAL_ID, list(transactional_ids),
                                  list(TXN_OPS)))
        for name in names for op in ops
    ]
    if not bindings:
        return
    admin = AdminClient(admin_conf)
    for fut in admin.create_acls(bindings, request_timeout=30).values():
        fut.result()
