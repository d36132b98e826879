"""Run flows as real ``waxflow run`` processes against the test broker and read their history."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from tests.kafka_helpers import create_topic, read_all

WAXFLOW = str(Path(sys.executable).with_name("waxflow"))


def flow_env(bootstrap: str, log_topic: str, **extra: str) -> dict[str, str]:
    """Environment for a flow process: the test broker and a per-test execution-log topic."""
    env = dict(os.environ)
    env.update({"WAXFLOW_BOOTSTRAP": bootstrap, "WAXFLOW_EXECUTION_LOG": log_topic,
                "WAXFLOW_LOG_LEVEL": "WARNING", **extra})
    return env


def new_log_topic() -> str:
    return f"log-{uuid.uuid4().hex[:10]}"


def created_log_topic(admin: AdminClient) -> str:
    """A fresh execution-log topic, created up front as waxflow would create it: creating it
    inside a flow's first batch can take longer than a 1 s share-group record lock on a
    loaded machine."""
    topic = new_log_topic()
    create_topic(admin, topic, 6, {"cleanup.policy": "compact",
                                   "min.compaction.lag.ms": str(7 * 24 * 3600 * 1000),
                                   "segment.ms": str(3600 * 1000)})
    return topic


def write_flow(tmp_path: Path, text: str, name: str = "flow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def new_group() -> str:
    """A fresh consumer-group id."""
    return f"g-{uuid.uuid4().hex[:8]}"


def realtime_flow(flow_id: str, namespace: str, body: str, *, topic: str, group: str,
                  trigger: str = "") -> str:
    """The text of flow ``namespace.flow_id`` started by a ``kafka.RealtimeTrigger`` (id
    ``in``) reading the JSON values of ``topic`` in consumer group ``group``. ``trigger``:
    more properties of the trigger, YAML lines indented by four spaces; ``body``: the rest of
    the flow (``tasks:``...), as written."""
    return (f"id: {flow_id}\nnamespace: {namespace}\ntriggers:\n  - id: in\n"
            f"    type: kafka.RealtimeTrigger\n    topic: {topic}\n    groupId: {group}\n"
            f"    valueDeserializer: JSON\n{trigger}{body}")


@dataclass(frozen=True)
class FlowRun:
    """A finished ``waxflow run`` (:func:`run_once`) and where its history went."""

    result: subprocess.CompletedProcess[str]
    path: Path
    bootstrap: str
    log_topic: str

    def ok(self) -> FlowRun:
        """This run, asserting the job ended well (the end of its stderr otherwise)."""
        assert self.result.returncode == 0, self.result.stderr[-3000:]
        return self

    def documents(self) -> list[dict[str, Any]]:
        """Every execution document the run wrote, in log order per partition."""
        return log_documents(self.bootstrap, self.log_topic)

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest document of each execution, by execution id."""
        return latest_by_id(self.documents())


def run_once(bootstrap: str, tmp_path: Path, text: str, *args: str, idle: float,
             timeout: float, log_topic: str | None = None, **env: str) -> FlowRun:
    """Write ``text`` as ``tmp_path/flow.yaml`` and run it (``waxflow run --stop-when-idle
    idle`` with ``args``) to completion on the test broker, its history going to
    ``log_topic`` (default: a fresh topic); ``env``: more environment variables."""
    log = log_topic or new_log_topic()
    path = write_flow(tmp_path, text)
    result = run_flow(path, flow_env(bootstrap, log, **env), *args, idle=idle, timeout=timeout)
    return FlowRun(result, path, bootstrap, log)


def run_flow(path: Path, env: dict[str, str], *args: str, idle: float = 3.0,
             timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    """``waxflow run FLOW --stop-when-idle idle`` to completion."""
    return subprocess.run([WAXFLOW, "run", str(path), "--stop-when-idle", str(idle), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


class FlowProcess(subprocess.Popen[str]):
    """A background ``waxflow run`` whose stdout/stderr are drained continuously.

    Undrained pipes fill up (64 KiB) and then block the job on its next log line: a killed
    and restarted job that logs warnings would stall. ``communicate`` returns what was read.
    """

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        super().__init__(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, start_new_session=True)
        self._chunks: dict[str, list[str]] = {"out": [], "err": []}
        self._drains = [threading.Thread(target=self._drain, args=(stream, name), daemon=True)
                        for stream, name in ((self.stdout, "out"), (self.stderr, "err"))]
        for t in self._drains:
            t.start()

    def _drain(self, stream: Any, name: str) -> None:
        for line in stream:
            self._chunks[name].append(line)

    def captured(self) -> tuple[str, str]:
        return "".join(self._chunks["out"]), "".join(self._chunks["err"])

    def communicate(self, input: Any = None, timeout: float | None = None
                    ) -> tuple[str, str]:
        self.wait(timeout)
        for t in self._drains:
            t.join(timeout=10)
        return self.captured()


def start_flow(path: Path, env: dict[str, str], *args: str,
               idle: float | None = None) -> FlowProcess:
    cmd = [WAXFLOW, "run", str(path), *args]
    if idle is not None:
        cmd += ["--stop-when-idle", str(idle)]
    return FlowProcess(cmd, env)


def produce(bootstrap: str, topic: str, values: list[bytes | None],
            keys: list[bytes | None] | None = None, partitions: int | None = None,
            headers: list[tuple[str, bytes]] | None = None) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, v in enumerate(values):
        kwargs: dict[str, Any] = {}
        if partitions:
            kwargs["partition"] = i % partitions
        if headers:
            kwargs["headers"] = headers
        p.produce(topic, value=v, key=keys[i] if keys else None, **kwargs)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(30) == 0


def produce_json(bootstrap: str, topic: str, docs: list[dict[str, Any]],
                 partitions: int | None = None) -> None:
    produce(bootstrap, topic, [json.dumps(d).encode() for d in docs],
            keys=[str(d.get("id", i)).encode() for i, d in enumerate(docs)],
            partitions=partitions)


def log_documents(bootstrap: str, log_topic: str) -> list[dict[str, Any]]:
    """Every document of the execution log, in log order per partition."""
    return [json.loads(m.value() or b"null") for m in read_all(bootstrap, log_topic)]


def latest_by_id(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for d in docs:
        out[d["id"]] = d
    return out


def runs_by_id(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    runs: dict[str, set[str]] = defaultdict(set)
    for d in docs:
        runs[d["id"]].add(d["runId"])
    return runs


def job_lines(err: str, limit: int = 3000) -> str:
    """A job's own stderr lines (librdkafka's connection noise left out), the last ``limit``
    characters."""
    return "\n".join(ln for ln in err.splitlines()
                     if "waxflow: broker " in ln  # outage lines quote librdkafka's reason
                     or ("waxflow" in ln and "rdkafka" not in ln and "thrd:" not in ln)
                     )[-limit:]


def thread_dump(err: str, limit: int = 6000) -> str:
    """The thread stacks a job printed on SIGUSR2 (the last ``limit`` characters)."""
    start = min((i for i in (err.find("Thread 0x"), err.find("Current thread 0x"))
                 if i >= 0), default=-1)
    return "" if start < 0 else "thread stacks:\n" + err[start:][-limit:]


def finish(proc: FlowProcess, timeout: float = 240) -> str:
    """Wait for a job started with ``--stop-when-idle`` to exit 0; return its stderr. A job
    still running after ``timeout`` is SIGKILLed and fails the test with its own lines."""
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGUSR2)  # the job prints its threads' stacks
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGKILL)
        _out, err = proc.communicate(timeout=30)
        raise AssertionError(f"the job did not finish within {timeout:.0f}s:\n"
                             f"{job_lines(err)}\n{thread_dump(err)}") from None
    assert proc.returncode == 0, f"the job exited {proc.returncode}:\n{job_lines(err)}"
    return err


class LogWatcher:
    """Follows a per-test execution-log topic as documents arrive: every document in
    ``docs``, the ids with a terminal document in ``done``, the others in ``started``."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                           "auto.offset.reset": "earliest", "enable.auto.commit": False,
                           "topic.metadata.refresh.interval.ms": 500})
        self.c.subscribe([topic])
        self.docs: list[dict[str, Any]] = []
        self.done: set[str] = set()
        self.started: set[str] = set()

    def pump(self, seconds: float = 0.2) -> None:
        """Read what arrived within ``seconds``."""
        for m in self.c.consume(1000, seconds):
            if m.error() is None and m.value():
                doc = json.loads(m.value())
                self.docs.append(doc)
                (self.done if doc["terminal"] else self.started).add(doc["id"])

    def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Read until ``done()``; fail after ``timeout`` seconds naming ``what``."""
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.pump()

    def wait_for(self, count: int, timeout: float = 120,
                 proc: subprocess.Popen[str] | None = None) -> None:
        """Wait until ``count`` executions are done; fail early (with the job's stderr)
        when ``proc`` exits meanwhile."""
        deadline = time.monotonic() + timeout
        while len(self.done) < count:
            if proc is not None and proc.poll() is not None:
                err = proc.communicate()[1] if hasattr(proc, "captured") else ""
                raise AssertionError(f"the job exited ({proc.returncode}) with only "
                                     f"{len(self.done)} done: {err[-3000:]}")
            assert time.monotonic() < deadline, f"only {len(self.done)} done"
            self.pump()

    def wait_running(self, timeout: float = 120) -> str:
        """Wait until some execution has started (RUNNING) and not finished; return its id."""
        deadline = time.monotonic() + timeout
        while True:
            in_flight = self.started - self.done
            if in_flight:
                return next(iter(in_flight))
            assert time.monotonic() < deadline, "no execution in flight"
            self.pump()

    def successes(self, ids: set[Any]) -> dict[Any, str]:
        """Record id → worker, for the records among ``ids`` with a SUCCESS document (flows
        whose first task outputs ``id`` and ``worker``)."""
        out = {}
        for d in self.docs:
            if d["state"] == "SUCCESS":
                outputs = d["taskRuns"][0]["outputs"]
                if outputs["id"] in ids:
                    out[outputs["id"]] = outputs["worker"]
        return out

    def close(self) -> None:
        self.c.close()
