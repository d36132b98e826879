"""Java client security settings (what Kestra flows carry) translated for librdkafka."""

from __future__ import annotations

import base64
import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from confluent_kafka import Producer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12
from cryptography.x509.oid import NameOID

from waxflow.connectors.java_properties import JavaPropertyError, translate
from waxflow.expressions import mask


def _ca() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


SCRAM = ('org.apache.kafka.common.security.scram.ScramLoginModule required '
         'username="alice" password="p@ss \\"q\\" w0rd";')


def test_jaas_scram_becomes_username_and_password_and_the_password_is_masked() -> None:
    out = translate({"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                     "sasl.jaas.config": SCRAM})
    assert out == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                   "sasl.username": "alice", "sasl.password": 'p@ss "q" w0rd'}
    assert 'p@ss "q" w0rd' not in mask('connect with p@ss "q" w0rd')
    # librdkafka takes the result (it refuses the Java line itself)
    Producer({"bootstrap.servers": "127.0.0.1:9", **out})
    with pytest.raises(Exception, match="JAAS"):
        Producer({"bootstrap.servers": "127.0.0.1:9", "security.protocol": "SASL_SSL",
                  "sasl.jaas.config": SCRAM})


def test_plain_login_module_and_unquoted_values() -> None:
    out = translate({"sasl.jaas.config": "org.apache.kafka.common.security.plain."
                                         "PlainLoginModule required username=bob password=x1;"})
    assert (out["sasl.username"], out["sasl.password"]) == ("bob", "x1")


@pytest.mark.parametrize(("line", "says"), [
    ("org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;",
     "OAuthBearerLoginModule has no librdkafka equivalent"),
    ("org.apache.kafka.common.security.scram.ScramLoginModule required username=\"a\";",
     "needs password"),
    ("just text", "expected '<LoginModule class> required"),
])
def test_jaas_lines_it_cannot_translate_are_one_clear_error(line: str, says: str) -> None:
    with pytest.raises(JavaPropertyError, match=says):
        translate({"sasl.jaas.config": line})


def test_a_base64_pkcs12_truststore_becomes_a_private_pem_ca_file() -> None:
    ca = _ca()
    store = pkcs12.serialize_key_and_certificates(b"ca", None, None, [ca],
                                                  BestAvailableEncryption(b"changeit"))
    out = translate({"ssl.truststore.location": base64.b64encode(store).decode(),
                     "ssl.truststore.password": "changeit", "ssl.truststore.type": "PKCS12"})
    assert set(out) == {"ssl.ca.location"}
    pem = Path(out["ssl.ca.location"])
    assert x509.load_pem_x509_certificate(pem.read_bytes()) == ca
    assert stat.S_IMODE(os.stat(pem).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pem.parent).st_mode) == 0o700
    with pytest.raises(JavaPropertyError, match="not a PKCS12 store that"):
        translate({"ssl.truststore.location": base64.b64encode(store).decode(),
                   "ssl.truststore.password": "wrong"})


def test_keystores_stay_pkcs12_files_and_jks_is_refused(tmp_path: Path) -> None:
    out = translate({"ssl.keystore.location": base64.b64encode(b"\x30\x82 p12").decode(),
                     "ssl.keystore.password": "k", "ssl.keystore.type": "PKCS12"})
    assert Path(out["ssl.keystore.location"]).read_bytes() == b"\x30\x82 p12"
    assert out["ssl.keystore.password"] == "k" and "ssl.keystore.type" not in out
    real = tmp_path / "ks.p12"
    real.write_bytes(b"x")
    assert translate({"ssl.keystore.location": str(real)})["ssl.keystore.location"] == str(real)
    with pytest.raises(JavaPropertyError, match="keytool -importkeystore"):
        translate({"ssl.keystore.location": str(real), "ssl.keystore.type": "JKS"})
    with pytest.raises(JavaPropertyError, match="keytool -exportcert"):
        translate({"ssl.truststore.location": str(real), "ssl.truststore.type": "JKS"})
    with pytest.raises(JavaPropertyError, match="neither a file nor base64"):
        translate({"ssl.keystore.location": "/no/such/file.p12"})


def test_pem_strings_and_untouched_settings() -> None:
    out = translate({"ssl.keystore.type": "PEM", "ssl.keystore.certificate.chain": "C",
                     "ssl.keystore.key": "K", "ssl.truststore.certificates": "A",
                     "ssl.endpoint.identification.algorithm": "https", "acks": "all"})
    assert out == {"ssl.certificate.pem": "C", "ssl.key.pem": "K", "ssl.ca.pem": "A",
                   "ssl.endpoint.identification.algorithm": "https", "acks": "all"}
