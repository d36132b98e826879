"""Issue 11, "Prove it" 5: a SASL_SSL broker with SCRAM-SHA-512 users and ACLs.

The module starts its own secure broker with ``waxflow broker start --secure`` on free ports
(a self-signed CA and broker certificate, the admin as super user, KRaft's
StandardAuthorizer) and takes the admin's settings from the file the command names. A test
user gets ACLs on
``sec-`` topics and groups, the ``log-`` execution-log topics, the instance-lock topic and the
flows' transactional ids. Flows reach it with ``sasl.password: "{{ secret('KAFKA_PASSWORD') }}"``
(``$WAXFLOW_SECRET_KAFKA_PASSWORD``) and ``ssl.ca.location: "{{ env.KAFKA_CA }}"``.

Checked: a RealtimeTrigger flow, a transactional ``kafka.Produce`` flow, a share-group flow and
a schedule flow with ``kafka.Consume`` (its log through ``$WAXFLOW_KAFKA_PROPERTIES``) work
end to end with the right credentials; a wrong password and a missing READ ACL each stop
``waxflow run`` within seconds with one line naming the principal (and the topic), no
traceback; the password is in no stderr/stdout line of any run nor in any execution document.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from tests.flow_helpers import (
    WAXFLOW,
    flow_env,
    latest_by_id,
    new_log_topic,
    start_flow,
    write_flow,
)
from tests.kafka_helpers import create_topic, read_all
from waxflow.connectors.broker import LocalBroker, free_port
from waxflow.connectors.broker_security import add_user, grant, read_properties

pytestmark = pytest.mark.integration

USER = "flowuser"
NAMESPACE = "tests.secure"


@dataclass
class Secure:
    """The running secure broker, its admin settings and the test user's password."""

    broker: LocalBroker
    admin_conf: dict[str, Any]
    password: str
    outputs: list[str] = field(default_factory=list)  # every stdout/stderr of the runs

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def ca(self) -> str:
        return str(self.admin_conf["ssl.ca.location"])

    def admin(self) -> AdminClient:
        return AdminClient(self.admin_conf)

    def env(self, log: str, password: str | None = None) -> dict[str, str]:
        """The flow's environment; ``password=""``: the secret is not defined."""
        env = flow_env(self.bootstrap, log, KAFKA_CA=self.ca,
                       WAXFLOW_SECRET_KAFKA_PASSWORD=password or self.password)
        if password == "":
            del env["WAXFLOW_SECRET_KAFKA_PASSWORD"]
        return env

    def topic(self, prefix: str = "sec-", partitions: int = 1, **config: str) -> str:
        name = f"{prefix}{uuid.uuid4().hex[:10]}"
        create_topic(self.admin(), name, partitions, config)
        return name

    def produce(self, topic: str, docs: list[dict[str, Any]]) -> None:
        p = Producer({**self.admin_conf, "linger.ms": 5})
        for d in docs:
            p.produce(topic, key=str(d["n"]).encode(), value=json.dumps(d).encode())
        assert p.flush(30) == 0

    def read(self, topic: str, isolation: str = "read_uncommitted") -> list[Any]:
        extra = {k: v for k, v in self.admin_conf.items() if k != "bootstrap.servers"}
        return read_all(self.bootstrap, topic, isolation=isolation, extra=extra)

    def run(self, path: Path, log: str, password: str | None = None, timeout: float = 180.0,
            args: tuple[str, ...] = ("--stop-when-idle", "2"), **env: str
            ) -> tuple[int, str, str, float]:
        t0 = time.monotonic()
        res = subprocess.run([WAXFLOW, "run", str(path), *args], capture_output=True,
                             text=True, env={**self.env(log, password), **env},
                             timeout=timeout)
        self.outputs += [res.stdout, res.stderr]
        return res.returncode, res.stdout, res.stderr, time.monotonic() - t0


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    """The broker ``waxflow broker start --secure`` starts; the admin's settings from the
    file it names (its password is not printed)."""
    broker = LocalBroker(data_dir=tmp_path_factory.mktemp("secure-broker"), port=free_port(),
                         controller_port=free_port(), share_lock_ms=1000, secure=True)
    where = ["--data-dir", str(broker.data_dir), "--port", str(broker.port),
             "--controller-port", str(broker.controller_port)]
    t0 = time.monotonic()
    started = subprocess.run([WAXFLOW, "broker", "start", "--secure", "--share-lock-ms", "1000",
                              "--timeout", "240", *where], capture_output=True, text=True,
                             timeout=300)
    print(f"{started.stdout.strip()}\n(in {time.monotonic() - t0:.1f}s)")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        found = re.search(r"client settings \(with the admin password\): (\S+)", started.stdout)
        assert found is not None, started.stdout
        conf: dict[str, Any] = dict(read_properties(Path(found.group(1))))
        assert conf["sasl.username"] == "admin" and conf["sasl.password"] not in started.stdout
        assert conf["bootstrap.servers"] == broker.bootstrap
        password = f"pw-{uuid.uuid4().hex}"
        add_user(conf, USER, password)
        grant(conf, USER, topics=["sec-", "log-"], groups=["sec-", f"{NAMESPACE}."],
              transactional_ids=[f"waxflow-{NAMESPACE}."], prefixed=True)
        grant(conf, USER, topics=["waxflow.instances"])
        yield Secure(broker, conf, password)
    finally:
        subprocess.run([WAXFLOW, "broker", "stop", "--wipe", *where], timeout=120)
        broker.stop(wipe=True)  # in case the command could not


def flow_text(flow_id: str, topic: str, group: str, tasks: list[dict[str, Any]],
              group_type: str = "CONSUMER") -> str:
    props = dict(SECURE_PROPS)
    for task in tasks:
        if task["type"] == "kafka.Produce":
            task["properties"] = props
    trig = {"id": "in", "type": "kafka.RealtimeTrigger", "topic": topic, "groupId": group,
            "groupType": group_type, "valueDeserializer": "JSON", "properties": props}
    return json.dumps({"id": flow_id, "namespace": NAMESPACE, "triggers": [trig],
                       "tasks": tasks}, indent=1)


SECURE_PROPS = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": USER, "sasl.password": "{{ secret('KAFKA_PASSWORD') }}",
                "ssl.ca.location": "{{ env.KAFKA_CA }}"}
LOG_TASK = {"id": "log", "type": "core.Log", "message": "n={{ trigger.value.n }}"}


def assert_no_password(secure: Secure, log: str, *, wrong: str | None = None) -> None:
    """Neither password in any output of the runs nor in any record of the log topic."""
    secrets = [secure.password] + ([wrong] if wrong else [])
    for text in secure.outputs:
        for secret in secrets:
            assert secret not in text
    if log not in secure.admin().list_topics(timeout=30).topics:
        return  # the run stopped before it wrote any execution document
    for msg in secure.read(log):
        raw = (msg.key() or b"") + (msg.value() or b"")
        for secret in secrets:
            assert secret.encode() not in raw


def terminal(secure: Secure, log: str) -> list[dict[str, Any]]:
    """The latest document of each execution in the log, once they are terminal."""
    if log not in secure.admin().list_topics(timeout=30).topics:
        return []
    docs = latest_by_id([json.loads(m.value()) for m in secure.read(log)]).values()
    return [d for d in docs if d["terminal"]]


def successes(secure: Secure, log: str, n: int) -> list[dict[str, Any]]:
    docs = list(latest_by_id([json.loads(m.value()) for m in secure.read(log)]).values())
    assert len(docs) == n, [d["state"] for d in docs]
    assert {d["state"] for d in docs} == {"SUCCESS"}, [d.get("error") for d in docs]
    return docs


@pytest.fixture(scope="module")
def startup(secure: Secure, tmp_path_factory: pytest.TempPathFactory) -> float:
    """How long a ``waxflow run`` takes to refuse a flow before it touches Kafka (its secret
    is not defined): the part of a failing run that is not the failure's detection."""
    path = write_flow(tmp_path_factory.mktemp("nosecret"),
                      flow_text("nosecret", "sec-none", "sec-none", [LOG_TASK]))
    code, _out, err, secs = secure.run(path, new_log_topic(), password="")
    assert code == 1 and "KAFKA_PASSWORD" in one_error_line(err), err[-3000:]
    return secs


def assert_fast(secs: float, startup: float, what: str) -> None:
    """Within seconds of what a run takes to refuse a flow without touching Kafka: a hang
    would wait for a Kafka timeout (15 s for metadata, 60 s and more for the lock)."""
    assert secs - startup < 20, f"{what}: {secs:.1f}s (startup {startup:.1f}s)"


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    return lines[0]


def test_realtime_flow_with_secret_credentials(secure: Secure, tmp_path: Path) -> None:
    topic, log = secure.topic(partitions=2), new_log_topic()
    secure.produce(topic, [{"n": i} for i in range(20)])
    path = write_flow(tmp_path, flow_text("rt", topic, f"sec-{uuid.uuid4().hex[:8]}",
                                          [LOG_TASK]))
    # DEBUG: every log line of the job is checked for the password
    code, _out, err, secs = secure.run(path, log, WAXFLOW_LOG_LEVEL="DEBUG")
    assert code == 0, err[-3000:]
    print(f"realtime run at DEBUG: {len(err.splitlines())} stderr lines")
    docs = successes(secure, log, 20)
    assert len({(d["trigger"]["partition"], d["trigger"]["offset"]) for d in docs}) == 20
    assert_no_password(secure, log)
    print(f"realtime flow over SASL_SSL: 20 records in {secs:.1f}s")


def test_transactional_produce_with_secret_credentials(secure: Secure, tmp_path: Path) -> None:
    src, dst, log = secure.topic(), secure.topic(), new_log_topic()
    secure.produce(src, [{"n": i} for i in range(10)])
    produce_task = {"id": "out", "type": "kafka.Produce", "topic": dst,
                    "valueSerializer": "JSON",
                    "from": {"key": "{{ trigger.value.n }}",
                             "value": {"n": "{{ trigger.value.n }}"}}}
    path = write_flow(tmp_path, flow_text("produce", src, f"sec-{uuid.uuid4().hex[:8]}",
                                          [produce_task]))
    code, _out, err, secs = secure.run(path, log)
    assert code == 0, err[-3000:]
    successes(secure, log, 10)
    out = secure.read(dst, isolation="read_committed")
    assert sorted(int(m.key()) for m in out) == list(range(10))  # each exactly once
    assert_no_password(secure, log)
    print(f"transactional Produce over SASL_SSL: 10 records in {secs:.1f}s")


def test_share_group_with_secret_credentials(secure: Secure, tmp_path: Path) -> None:
    """Runs until every record has its document, then SIGTERM (a clean stop, exit 0): how
    soon a share consumer gets its first records varies with the machine's load, so an idle
    timeout could end the run before they came."""
    topic, log = secure.topic(), new_log_topic()
    secure.produce(topic, [{"n": i} for i in range(10)])
    path = write_flow(tmp_path, flow_text("share", topic, f"sec-{uuid.uuid4().hex[:8]}",
                                          [LOG_TASK], group_type="SHARE"))
    t0 = time.monotonic()
    proc = start_flow(path, secure.env(log))
    try:
        while proc.poll() is None and time.monotonic() - t0 < 150:
            if len(terminal(secure, log)) >= 10:
                break
            time.sleep(1)
        secs = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
        secure.outputs += [out, err]
    assert proc.returncode == 0, err[-3000:]
    docs = successes(secure, log, 10)
    assert {d["trigger"]["ack"] for d in docs} == {"ACCEPT"}
    assert_no_password(secure, log)
    print(f"share-group flow over SASL_SSL: 10 records in {secs:.1f}s")


def test_wrong_password_fails_fast_with_one_line(secure: Secure, startup: float,
                                                 tmp_path: Path) -> None:
    topic, log = secure.topic(), new_log_topic()
    secure.produce(topic, [{"n": 1}])
    wrong = f"wrong-{uuid.uuid4().hex}"
    for group_type in ("CONSUMER", "SHARE"):
        path = write_flow(tmp_path, flow_text(f"wrong-{group_type.lower()}", topic,
                                              f"sec-{uuid.uuid4().hex[:8]}", [LOG_TASK],
                                              group_type=group_type))
        code, _out, err, secs = secure.run(path, log, password=wrong)
        assert code == 1, err[-3000:]
        line = one_error_line(err)
        assert f"User:{USER}" in line and "refused the credentials" in line, line
        assert_fast(secs, startup, group_type)
        print(f"wrong password ({group_type}): exit 1 after {secs:.1f}s (a run refused "
              f"before Kafka: {startup:.1f}s): {line}")
    assert_no_password(secure, log, wrong=wrong)


def test_missing_read_acl_fails_fast_with_one_line(secure: Secure, startup: float,
                                                   tmp_path: Path) -> None:
    topic, log = secure.topic(prefix="noread-"), new_log_topic()
    grant(secure.admin_conf, USER, topics=[topic], topic_ops=["DESCRIBE", "WRITE"])
    secure.produce(topic, [{"n": 1}])
    for group_type in ("CONSUMER", "SHARE"):
        path = write_flow(tmp_path, flow_text(f"noread-{group_type.lower()}", topic,
                                              f"sec-{uuid.uuid4().hex[:8]}", [LOG_TASK],
                                              group_type=group_type))
        code, _out, err, secs = secure.run(path, log)
        assert code == 1, err[-3000:]
        line = one_error_line(err)
        assert f"User:{USER}" in line and f"READ topic {topic}" in line, line
        assert_fast(secs, startup, group_type)
        print(f"missing READ ACL ({group_type}): exit 1 after {secs:.1f}s (a run refused "
              f"before Kafka: {startup:.1f}s): {line}")
    assert_no_password(secure, log)


def test_schedule_flow_consume_and_log_through_properties_file(secure: Secure,
                                                               tmp_path: Path) -> None:
    """A schedule flow has no trigger properties: its execution log and instance lock take
    the security settings from ``$WAXFLOW_KAFKA_PROPERTIES`` (templates rendered there
    too); its ``kafka.Consume`` task has its own templated ``properties``."""
    topic, log = secure.topic(), new_log_topic()
    secure.produce(topic, [{"n": i} for i in range(5)])
    props_file = tmp_path / "client.properties"
    props_file.write_text("".join(f"{k}={v}\n" for k, v in SECURE_PROPS.items()))
    flow = {"id": "sched", "namespace": NAMESPACE,
            "triggers": [{"id": "tick", "type": "schedule.Interval", "interval": "PT1S"}],
            "tasks": [{"id": "pull", "type": "kafka.Consume", "topic": topic,
                       "groupId": f"sec-{uuid.uuid4().hex[:8]}", "valueDeserializer": "JSON",
                       "properties": SECURE_PROPS}]}
    path = write_flow(tmp_path, json.dumps(flow))
    code, _out, err, secs = secure.run(path, log, args=("--ticks", "1"),
                                       WAXFLOW_KAFKA_PROPERTIES=str(props_file))
    assert code == 0, err[-3000:]
    (doc,) = successes(secure, log, 1)
    assert doc["taskRuns"][0]["outputs"]["messagesCount"] == 5
    assert_no_password(secure, log)
    print(f"schedule flow + Consume over SASL_SSL: {secs:.1f}s")


def test_java_client_settings_from_a_kestra_flow_work(secure: Secure, tmp_path: Path) -> None:
    """The security settings a Kestra flow carries for the Java client: ``sasl.jaas.config``
    (SCRAM, the password from a secret) and a PKCS12 truststore given inline as base64 (the
    Kestra plugin's documented SSL form), translated for librdkafka: the flow runs end to
    end and the password appears nowhere."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

    ca = x509.load_pem_x509_certificate(Path(secure.ca).read_bytes())
    store = pkcs12.serialize_key_and_certificates(b"ca", None, None, [ca],
                                                  BestAvailableEncryption(b"changeit"))
    props = {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
                            f"username=\"{USER}\" password=\"{{{{ secret('KAFKA_PASSWORD') }}}}\";",
        "ssl.truststore.type": "PKCS12", "ssl.truststore.password": "changeit",
        "ssl.truststore.location": base64.b64encode(store).decode(),
    }
    topic, log = secure.topic(), new_log_topic()
    secure.produce(topic, [{"n": i} for i in range(5)])
    flow = json.loads(flow_text("java", topic, f"sec-{uuid.uuid4().hex[:8]}", [LOG_TASK]))
    flow["triggers"][0]["properties"] = props
    path = write_flow(tmp_path, json.dumps(flow, indent=1))
    code, _out, err, _secs = secure.run(path, log)
    assert code == 0, err[-3000:]
    successes(secure, log, 5)
    assert_no_password(secure, log)
