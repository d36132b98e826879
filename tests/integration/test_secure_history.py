"""Issue 11: the execution history reads a secured cluster (SASL_SSL, SCRAM-SHA-512, ACLs).

On the broker of ``test_secure_broker.py`` (``waxflow broker start --secure``, its ``secure``
fixture), a realtime flow writes its executions; ``waxflow executions`` and ``waxflow
server`` then read them with nothing but ``$WAXFLOW_KAFKA_PROPERTIES`` (the flows' templated
settings: ``sasl.password`` from ``secret('KAFKA_PASSWORD')``, the CA from ``env``; the
bootstrap servers from the file too). The test user has READ + DESCRIBE on the ``log-``
topics and no ACL on the index's throwaway group: reading the log needs none.

Checked: ``list``/``show``/``trace`` answer from the secured log (``show`` reads the document
back over SASL_SSL); without the file they cannot; a wrong password and a missing READ ACL
each end the command with exit 1 and one line naming the principal (and the topic), long
before the sync timeout; the server lists and shows the executions and reads the trigger
record, and its ``/api/status`` says why when the password is wrong; the
password is in no output, no API answer and no server log.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.flow_helpers import WAXFLOW, new_log_topic, write_flow
from tests.integration.test_secure_broker import (
    LOG_TASK,
    SECURE_PROPS,
    USER,
    Secure,
    flow_text,
    secure,  # noqa: F401  (the module-scoped secure broker, a fixture of this module too)
    successes,
)
from waxflow.connectors.broker import free_port
from waxflow.connectors.broker_security import grant

pytestmark = pytest.mark.integration

RECORDS = 6
#: a sync that waited for its timeout would take this long: a refusal must come far sooner
SYNC_TIMEOUT = 120


@dataclass
class History:
    """The secured log a realtime flow wrote, and how the history side reaches it."""

    secure: Secure
    log: str
    docs: list[dict[str, Any]]
    properties: Path
    home: Path
    outputs: list[str]

    def env(self, password: str | None = None, *, properties: bool = True,
            **extra: str) -> dict[str, str]:
        """The environment of a history command: ``$WAXFLOW_KAFKA_PROPERTIES`` (holding the
        bootstrap servers: ``$WAXFLOW_BOOTSTRAP`` is unset), its secret and CA, the log."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("WAXFLOW_BOOTSTRAP", "WAXFLOW_SERVER_TOKEN")
               and not k.startswith("WAXFLOW_SECRET_")}
        env.update({"WAXFLOW_SECRET_KAFKA_PASSWORD": password or self.secure.password,
                    "KAFKA_CA": self.secure.ca, "WAXFLOW_EXECUTION_LOG": self.log,
                    "WAXFLOW_HOME": str(self.home / uuid.uuid4().hex)})
        if properties:
            env["WAXFLOW_KAFKA_PROPERTIES"] = str(self.properties)
        env.update(extra)
        return env

    def executions(self, *args: str, env: dict[str, str] | None = None
                   ) -> tuple[int, str, str, float]:
        t0 = time.monotonic()
        res = subprocess.run([WAXFLOW, "executions", *args], capture_output=True, text=True,
                             env=env or self.env(), timeout=SYNC_TIMEOUT + 60)
        self.outputs += [res.stdout, res.stderr]
        return res.returncode, res.stdout, res.stderr, time.monotonic() - t0

    def assert_no_password(self, *more: str) -> None:
        for text in (*self.outputs, *more):
            assert self.secure.password not in text


@pytest.fixture(scope="module")
def history(secure: Secure, tmp_path_factory: pytest.TempPathFactory) -> History:  # noqa: F811
    """A realtime flow's executions of ``RECORDS`` records in a ``log-`` topic."""
    tmp = tmp_path_factory.mktemp("secure-history")
    topic, log = secure.topic(partitions=2), new_log_topic()
    secure.produce(topic, [{"n": i} for i in range(RECORDS)])
    path = write_flow(tmp, flow_text("hist", topic, f"sec-{uuid.uuid4().hex[:8]}",
                                     [LOG_TASK]))
    code, _out, err, _secs = secure.run(path, log)
    assert code == 0, err[-3000:]
    docs = successes(secure, log, RECORDS)
    properties = tmp / "client.properties"
    properties.write_text(f"bootstrap.servers={secure.bootstrap}\n"
                          + "".join(f"{k}={v}\n" for k, v in SECURE_PROPS.items()))
    assert secure.password not in properties.read_text()  # a template, not the password
    return History(secure, log, docs, properties, tmp, secure.outputs)


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    return lines[0]


def test_executions_list_show_and_trace_read_the_secured_log(history: History) -> None:
    code, out, err, secs = history.executions("list", "--format", "json")
    assert code == 0, err[-3000:]
    listed = json.loads(out)
    assert sorted(r["id"] for r in listed) == sorted(d["id"] for d in history.docs)
    assert {r["state"] for r in listed} == {"SUCCESS"}
    print(f"executions list over SASL_SSL: {len(listed)} executions in {secs:.1f}s")

    doc = history.docs[0]
    code, out, err, _ = history.executions("show", doc["id"][:10], "--format", "json")
    assert code == 0, err[-3000:]
    shown = json.loads(out)
    assert shown["id"] == doc["id"] and "documentError" not in shown  # read back from the log
    assert [t["taskId"] for t in shown["taskRuns"]] == ["log"]
    assert [ln["message"][:2] for ln in shown["logs"]] == ["n="]

    trig = doc["trigger"]
    code, out, err, _ = history.executions(
        "trace", trig["topic"], str(trig["partition"]), str(trig["offset"]), "--format", "json")
    assert code == 0, err[-3000:]
    assert [r["id"] for r in json.loads(out)] == [doc["id"]]

    code, out, err, _ = history.executions("list")  # the table
    assert code == 0 and f"{RECORDS} execution(s)" in out, err[-3000:]
    history.assert_no_password()


def test_without_the_properties_file_the_log_cannot_be_read(history: History) -> None:
    """The control: the same command without ``$WAXFLOW_KAFKA_PROPERTIES`` speaks plaintext
    to the SASL_SSL listener and reads nothing (one line, exit 1)."""
    env = history.env(properties=False, WAXFLOW_BOOTSTRAP=history.secure.bootstrap)
    code, out, err, _ = history.executions("list", "--format", "json", "--sync-timeout", "5",
                                           env=env)
    assert code == 1 and out == "", out
    line = one_error_line(err)
    assert "cannot read the execution log" in line and history.secure.bootstrap in line, line


def test_wrong_password_fails_fast_with_one_line(history: History) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    code, out, err, secs = history.executions(
        "list", "--sync-timeout", str(SYNC_TIMEOUT), env=history.env(wrong))
    assert code == 1 and out == "", out
    line = one_error_line(err)
    assert f"User:{USER}" in line and "refused the credentials" in line, line
    assert wrong not in err
    assert secs < SYNC_TIMEOUT / 2, f"{secs:.1f}s: waited for the sync timeout"
    print(f"wrong password: exit 1 after {secs:.1f}s (sync timeout {SYNC_TIMEOUT}s): {line}")
    history.assert_no_password()


def test_missing_read_acl_fails_fast_with_one_line(history: History) -> None:
    broker = history.secure
    log = broker.topic(prefix="noread-")  # not under the user's log- ACLs
    grant(broker.admin_conf, USER, topics=[log], topic_ops=["DESCRIBE"])
    broker.produce(log, [{"n": 1, "id": "x"}])
    code, out, err, secs = history.executions(
        "list", "--topic-log", log, "--sync-timeout", str(SYNC_TIMEOUT))
    assert code == 1 and out == "", out
    line = one_error_line(err)
    assert f"User:{USER}" in line and f"READ topic {log}" in line, line
    assert secs < SYNC_TIMEOUT / 2, f"{secs:.1f}s: waited for the sync timeout"
    print(f"missing READ ACL: exit 1 after {secs:.1f}s (sync timeout {SYNC_TIMEOUT}s): {line}")
    history.assert_no_password()


@dataclass
class Server:
    url: str
    token: str
    proc: subprocess.Popen[str]

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.token}"},
                         timeout=60)

    def status_until(self, done: Any, timeout: float = 120) -> dict[str, Any]:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"waxflow server exited {self.proc.returncode}"
            try:
                r = self.get("/api/status")
                last = r.text
                if r.status_code == 200 and done(r.json()):
                    found: dict[str, Any] = r.json()
                    return found
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.3)
        raise AssertionError(f"waxflow server status not reached in {timeout}s: {last}")


@pytest.fixture
def start_server(history: History) -> Iterator[Any]:
    """Starts ``waxflow server`` with the history's environment (``password``: another)."""
    started: list[subprocess.Popen[str]] = []

    def start(password: str | None = None) -> Server:
        token, port = secrets.token_urlsafe(12), free_port()
        proc = subprocess.Popen([WAXFLOW, "server", "--port", str(port)],
                                env={**history.env(password), "WAXFLOW_SERVER_TOKEN": token},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        started.append(proc)
        return Server(f"http://127.0.0.1:{port}", token, proc)

    yield start
    for proc in started:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
        history.outputs += [out, err]
    history.assert_no_password()


def test_server_serves_the_secured_history(history: History, start_server: Any) -> None:
    server: Server = start_server()
    status = server.status_until(lambda s: s["caughtUp"] and s["documents"] > 0)
    assert status["error"] is None and status["bootstrap"] == history.secure.bootstrap
    answers = [server.get("/api/executions")]
    page = answers[0].json()
    assert sorted(r["id"] for r in page["items"]) == sorted(d["id"] for d in history.docs)
    doc = history.docs[-1]
    answers.append(server.get(f"/api/executions/{doc['id']}"))
    shown = answers[-1].json()
    assert shown["id"] == doc["id"] and "documentError" not in shown, shown
    answers.append(server.get(f"/api/executions/{doc['id']}/record"))  # the trigger record
    record = answers[-1].json()
    assert record.get("error") is None and record["value"]["text"].startswith("{"), record
    answers.append(server.get("/api/flows"))
    (flow,) = [f for f in answers[-1].json() if f["flow"] == "hist"]
    assert flow["counts"] == {"SUCCESS": RECORDS}, flow
    answers.append(server.get(f"/executions/{doc['id']}"))  # the page
    assert answers[-1].status_code == 200 and doc["id"] in answers[-1].text
    history.assert_no_password(*(a.text for a in answers), server.get("/api/status").text)


def test_server_with_a_wrong_password_says_why(history: History, start_server: Any) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    server: Server = start_server(wrong)
    status = server.status_until(lambda s: s["error"] is not None)
    assert f"User:{USER}" in status["error"] and "refused the credentials" in status["error"]
    assert wrong not in status["error"] and history.secure.password not in status["error"]
    page = server.get("/executions")  # every page's header says it too
    assert "refused the credentials" in page.text and wrong not in page.text
    print(f"server with a wrong password: /api/status error: {status['error']}")
