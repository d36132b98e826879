"""Secure-cluster pieces that need no broker: the access errors' wording and masking, the
secure broker's certificates and settings (``waxflow broker start --secure``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from waxflow.cli import main
from waxflow.connectors.broker import LocalBroker
from waxflow.connectors.broker_security import (
    ADMIN_USER,
    SecureFiles,
    make_certs,
    read_properties,
)
from waxflow.connectors.kafka_errors import (
    KafkaAccessError,
    check_access,
    principal,
    raise_if_access,
)
from waxflow.errors import WaxflowError

SCRAM = {"bootstrap.servers": "127.0.0.1:1", "security.protocol": "SASL_SSL",
         "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "alice",
         "sasl.password": "s3cret-password"}


def test_principal_names_what_the_acls_name() -> None:
    assert principal(SCRAM) == "User:alice (SCRAM-SHA-512)"
    assert principal({"security.protocol": "sasl_plaintext", "sasl.mechanism": "OAUTHBEARER"}
                     ) == "the OAUTHBEARER principal"
    assert principal({"security.protocol": "SSL"}) == "the TLS client certificate's principal"
    assert principal({}) == "User:ANONYMOUS"


def test_authorization_error_names_principal_operation_and_topic() -> None:
    err = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed")
    with pytest.raises(KafkaAccessError) as info:
        raise_if_access(err, SCRAM, "flow a.b", name="orders")
    msg = str(info.value)
    assert isinstance(info.value, WaxflowError)
    assert "User:alice" in msg and "READ topic orders" in msg and "\n" not in msg
    group_err = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "Group authorization failed")
    with pytest.raises(KafkaAccessError, match="READ group g1"):
        raise_if_access(group_err, SCRAM, "flow a.b", name="g1")


def test_authentication_error_never_shows_the_password() -> None:
    # a broker or client error text that echoes the password is masked
    err = KafkaError(KafkaError._AUTHENTICATION, "bad credentials s3cret-password for alice")
    with pytest.raises(KafkaAccessError) as info:
        raise_if_access(err, SCRAM, "flow a.b")
    assert "s3cret-password" not in str(info.value)
    assert "refused the credentials of User:alice" in str(info.value)


def test_other_errors_pass() -> None:
    raise_if_access(None, SCRAM, "x")
    raise_if_access(KafkaError(KafkaError._TRANSPORT, "down"), SCRAM, "x")


def test_unreachable_cluster_is_not_an_access_error() -> None:
    # nothing listens on port 1: the probe gives up quietly (outage handling is elsewhere)
    check_access({"bootstrap.servers": "127.0.0.1:1"}, "flow x", read=["t"], timeout=0.5)


def test_certificates_chain_to_the_ca_and_name_loopback(tmp_path: Path) -> None:
    make_certs(tmp_path)
    verify = subprocess.run(["openssl", "verify", "-CAfile", "ca.pem", "broker.crt"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    text = subprocess.run(["openssl", "x509", "-in", "broker.crt", "-noout", "-text"],
                          cwd=tmp_path, capture_output=True, text=True).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    keystore = (tmp_path / "broker-keystore.pem").read_text()
    assert keystore.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, as Kafka wants
    assert keystore.count("BEGIN CERTIFICATE") == 2
    assert (tmp_path / "broker-keystore.pem").stat().st_mode & 0o077 == 0


def test_secure_files_keep_the_admin_password(tmp_path: Path) -> None:
    files = SecureFiles(tmp_path / "secure")
    first = files.prepare("127.0.0.1:1000")
    assert files.prepare("127.0.0.1:2000") == first  # a restart on other ports: same user
    conf = read_properties(files.client_properties)
    assert conf == {"bootstrap.servers": "127.0.0.1:2000", "security.protocol": "SASL_SSL",
                    "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": ADMIN_USER,
                    "sasl.password": first, "ssl.ca.location": str(files.ca_file)}
    assert files.client_properties.stat().st_mode & 0o077 == 0
    props = files.server_properties(1000, 1001, first)
    for line in ("listeners=SASL_SSL://127.0.0.1:1000,CONTROLLER://127.0.0.1:1001",
                 "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
                 "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                 "super.users=User:admin", "ssl.keystore.type=PEM"):
        assert line in props.splitlines()
    assert files.format_args(first) == ["--add-scram",
                                        f"SCRAM-SHA-512=[name=admin,password={first}]"]


def test_storage_of_the_other_mode_is_refused(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "kraft-logs").mkdir()
    (tmp_path / "kraft-logs" / "meta.properties").write_text("node.id=1\n")
    assert LocalBroker(tmp_path).formatted_secure is False
    code = main(["broker", "start", "--secure", "--data-dir", str(tmp_path),
                 "--port", "1", "--controller-port", "2"])
    assert code == 1
    err = capsys.readouterr().err
    assert "made for a plaintext broker" in err and "--wipe" in err


def test_properties_file_is_the_default_of_every_client(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from waxflow.connectors.kafka_config import PropertiesFileError, client_conf
    from waxflow.expressions import mask

    path = tmp_path / "client.properties"
    path.write_text("# secure cluster\nbootstrap.servers=10.0.0.1:9093\n"
                    "security.protocol=SASL_SSL\nsasl.username=alice\n"
                    "sasl.password=file-password-123\n"
                    "ssl.ca.location={{ env.CA_FILE }}\n")
    monkeypatch.setenv("WAXFLOW_KAFKA_PROPERTIES", str(path))
    monkeypatch.setenv("CA_FILE", "/etc/ca.pem")
    monkeypatch.delenv("WAXFLOW_BOOTSTRAP", raising=False)
    conf = client_conf(None)  # e.g. a schedule flow's execution log
    assert conf["bootstrap.servers"] == "10.0.0.1:9093"
    assert conf["security.protocol"] == "SASL_SSL" and conf["ssl.ca.location"] == "/etc/ca.pem"
    assert "file-password-123" not in mask("pw file-password-123")  # masked like a secret
    assert client_conf({"sasl.username": "bob"})["sasl.username"] == "bob"  # flow wins
    monkeypatch.setenv("WAXFLOW_BOOTSTRAP", "127.0.0.1:9999")
    assert client_conf(None)["bootstrap.servers"] == "127.0.0.1:9999"
    monkeypatch.setenv("WAXFLOW_KAFKA_PROPERTIES", str(tmp_path / "missing"))
    with pytest.raises(PropertiesFileError, match="cannot read"):
        client_conf(None)
