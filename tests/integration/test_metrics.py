"""Metrics and health of ``waxflow run --metrics-port``, scraped by a real Prometheus server.

Prometheus is Debian's ``prometheus`` binary, started here on a free port with a temporary
config and data dir (``.ci/run`` installs it and sets ``WAXFLOW_REQUIRE_PROMETHEUS=1``: a
missing binary then fails instead of skipping). The numbers asserted come from PromQL, and
are compared with what the execution log (the history) holds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.flow_helpers import (
    FlowProcess,
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce,
    produce_json,
    start_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets
from waxflow.connectors.broker import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _consecutive_free_ports(count: int) -> int:
    """A port p such that p .. p+count-1 are free now (``--processes N`` uses p+i)."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        try:
            socks = []
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no consecutive free ports")


@dataclass
class Prometheus:
    url: str
    ports: dict[str, list[int]]  # scrape job -> the flow metrics ports it scrapes

    def query(self, promql: str) -> list[dict[str, Any]]:
        qs = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]["result"]  # type: ignore[no-any-return]

    def scalar(self, promql: str) -> float | None:
        """The single value of an instant query (None when it returns nothing)."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def wait_for(self, promql: str, want: Callable[[float | None], bool],
                 timeout: float = 60.0) -> float | None:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.scalar(promql)
            if want(value):
                return value
            time.sleep(0.5)
        raise AssertionError(f"{promql} = {value} after {timeout:g}s")


def _prometheus_binary() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus scraping, every second, the metrics ports the tests below use."""
    binary = _prometheus_binary()
    if binary is None:
        msg = "no prometheus binary (Debian package `prometheus`)"
        if os.environ.get("WAXFLOW_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"Prometheus required: {msg}")
        pytest.skip(msg)
    work = tmp_path_factory.mktemp("prometheus")
    ports = {"single": [free_port()]}
    base = _consecutive_free_ports(2)
    ports["processes"] = [base, base + 1]
    jobs = [{"job_name": job, "scrape_interval": "1s", "scrape_timeout": "900ms",
             "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in plist]}]}
            for job, plist in ports.items()]
    config = work / "prometheus.yml"
    config.write_text(json.dumps({"global": {"scrape_interval": "1s"},
                                  "scrape_configs": jobs}))  # JSON is YAML
    web = free_port()
    log = open(work / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{web}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{web}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("prometheus did not start: "
                                   + (work / "prometheus.log").read_text()[-2000:])
            time.sleep(0.2)
        yield Prometheus(url, ports)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def _env(bootstrap: str, log_topic: str, **extra: str) -> dict[str, str]:
    return flow_env(bootstrap, log_topic, PYTHONPATH=str(REPO), WAXFLOW_STATS_INTERVAL_MS="500",
                    WAXFLOW_METRICS_HOST="127.0.0.1", **extra)


FLOW = """
id: {flow_id}
namespace: tests
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    onSerdeError: {{type: DLQ, topic: {dlq}}}
    maxConcurrency: {concurrency}
tasks:
  - id: work
    type: core.Python
    function: "tests.flow_funcs:slow"
    args: {{ms: {ms}}}
  - id: flaky
    type: core.Python
    function: "tests.flow_funcs:fail_once"
    args: {{marks: "{marks}"}}
    retry: {{type: constant, interval: PT0.05S, maxAttempts: 3}}
"""


def _stop(proc: FlowProcess) -> tuple[str, str]:
    proc.terminate()
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=10)


def test_prometheus_scrapes_history_counts_and_lag_drops_to_zero(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, prometheus: Prometheus
) -> None:
    topic, dlq, log_topic = new_topic(2), new_topic(1), new_log_topic()
    group = f"g-{uuid.uuid4().hex[:8]}"
    marks = tmp_path / "marks"
    marks.mkdir()
    produce(bootstrap, topic, [b"{not json", b"\xff\xfe"], partitions=2)  # 2 x DLQ, SKIPPED
    flow = write_flow(tmp_path, FLOW.format(flow_id="metrics", topic=topic, group=group,
                                            dlq=dlq, ms=20, marks=marks, concurrency=2))
    (port,) = prometheus.ports["single"]
    proc = start_flow(flow, _env(bootstrap, log_topic), "--metrics-port", str(port))
    try:
        sel = '{job="single",flow="tests.metrics"}'
        # the group has committed offsets once the first two records are done: from then on
        # its lag is known (a group without a committed offset has none, as in lag tools)
        prometheus.wait_for(f"sum(waxflow_executions_total{sel})", lambda v: v == 2, 60)
        prometheus.wait_for(f"count(waxflow_consumer_lag{sel} == 0)", lambda v: v == 2, 30)
        produce_json(bootstrap, topic, [{"id": i} for i in range(300)], partitions=2)
        prometheus.wait_for(f"sum(waxflow_executions_total{sel})", lambda v: v == 302, 90)
        # caught up: the lag of both partitions drops to 0 once the last offsets commit
        prometheus.wait_for(f"max(waxflow_consumer_lag{sel})", lambda v: v == 0, 30)
        assert prometheus.scalar(f"count(waxflow_consumer_lag{sel})") == 2
        # ... and it was above 0 while the backlog was worked off (20 ms x 300 records, two
        # at a time on the execution pool: 3 s plus the retries, several statistics
        # intervals; the source commits the lowest unfinished offset at every epoch. With
        # one at a time the executions run inline, the whole backlog in one step, and the
        # first commit comes when everything is done: no lag is ever seen)
        peak = prometheus.scalar(f"max(max_over_time(waxflow_consumer_lag{sel}[5m]))")
        assert peak is not None and peak > 0
        status, body = _get(port, "/healthz")
        assert status == 200 and body.startswith("ok: idle"), body
        status, body = _get(port, "/readyz")
        assert status == 200 and "consuming 2 partitions" in body, body
        states = {r["metric"]["state"]: float(r["value"][1]) for r in prometheus.query(
            f"sum by (state) (waxflow_executions_total{sel})") if float(r["value"][1])}
        retries = prometheus.scalar(f"sum(waxflow_task_retries_total{sel})")
        attempts = {r["metric"]["state"]: float(r["value"][1]) for r in prometheus.query(
            'sum by (state) (waxflow_task_attempts_total{job="single",task="flaky"})')}
        dlq_count = prometheus.scalar(f"sum(waxflow_dlq_records_total{sel})")
        skipped = prometheus.scalar(f"sum(waxflow_records_skipped_total{sel})")
        consumed = prometheus.scalar(f"sum(waxflow_records_consumed_total{sel})")
        durations = prometheus.scalar(f"sum(waxflow_execution_duration_seconds_count{sel})")
        memory = prometheus.scalar('process_resident_memory_bytes{job="single"}')
        in_flight = prometheus.scalar(f"sum(waxflow_executions_in_flight{sel})")
        commits = prometheus.scalar(f"sum(waxflow_offset_commit_seconds_count{sel})")
        step_batches = prometheus.scalar(
            'sum(waxflow_batch_records_count{job="single",kind="step"})')
    finally:
        _out, err = _stop(proc)
    assert proc.returncode == 0, err[-3000:]

    history = latest_by_id(log_documents(bootstrap, log_topic))
    by_state = Counter(d["state"] for d in history.values())
    assert len(history) == 302
    assert states == {s: float(n) for s, n in by_state.items()} == {"SUCCESS": 300.0,
                                                                   "SKIPPED": 2.0}
    assert retries == 300 and attempts == {"FAILED": 300.0, "SUCCESS": 300.0}
    assert dlq_count == 2 and skipped == 2 and consumed == 302 and durations == 302
    assert in_flight == 0
    # offset commits were answered (their round trip observed) and the execute step was
    # handed batches of records
    assert commits is not None and commits > 0
    assert step_batches is not None and step_batches > 0
    assert memory is not None and memory > 10e6
    assert committed(bootstrap, group, topic, 2) == end_offsets(bootstrap, topic, 2)


def test_processes_2_metrics_sum_to_the_history(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, prometheus: Prometheus
) -> None:
    """``--processes 2 --metrics-port P``: process i serves P+i; their sums are the history."""
    topic, dlq, log_topic = new_topic(4), new_topic(1), new_log_topic()
    group = f"g-{uuid.uuid4().hex[:8]}"
    marks = tmp_path / "marks"
    marks.mkdir()
    produce_json(bootstrap, topic, [{"id": i} for i in range(400)], partitions=4)
    flow = write_flow(tmp_path, FLOW.format(flow_id="metrics2", topic=topic, group=group,
                                            dlq=dlq, ms=1, marks=marks, concurrency=8))
    base = prometheus.ports["processes"][0]
    proc = start_flow(flow, _env(bootstrap, log_topic), "--processes", "2",
                      "--metrics-port", str(base))
    try:
        sel = '{job="processes",flow="tests.metrics2"}'
        prometheus.wait_for(f"sum(waxflow_executions_total{sel})", lambda v: v == 400, 90)
        assert prometheus.scalar(f"count(waxflow_info{sel})") == 2
        per_process = {r["metric"]["instance"]: float(r["value"][1]) for r in prometheus.query(
            f"sum by (instance) (waxflow_executions_total{sel})")}
        retries = prometheus.scalar(f"sum(waxflow_task_retries_total{sel})")
        ready = [_get(base + i, "/readyz") for i in range(2)]
    finally:
        _out, err = _stop(proc)
    assert proc.returncode == 0, err[-3000:]
    history = latest_by_id(log_documents(bootstrap, log_topic))
    assert len(history) == 400 and {d["state"] for d in history.values()} == {"SUCCESS"}
    # both processes worked (2 partitions each) and neither counted the other's executions
    assert sorted(per_process) == [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]
    assert all(v > 0 for v in per_process.values()) and sum(per_process.values()) == 400
    assert retries == 400
    for status, body in ready:
        assert status == 200 and "consuming 2 partitions" in body, body


HANG_FLOW = """
id: hang
namespace: tests
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
tasks:
  - id: hang
    type: core.Python
    function: "tests.flow_funcs:slow"
    args: {{ms: 7000}}
    timeout: PT60S
"""


def test_healthz_turns_unhealthy_when_stuck_and_readyz_waits_for_assignment(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic, log_topic = new_topic(1), new_log_topic()
    group = f"g-{uuid.uuid4().hex[:8]}"
    flow = write_flow(tmp_path, HANG_FLOW.format(topic=topic, group=group))
    port = free_port()
    proc = start_flow(flow, _env(bootstrap, log_topic), "--metrics-port", str(port),
                      "--stuck-after", "2")
    try:
        # readiness: refused until the trigger's partition is assigned and fetched
        answers: list[tuple[int, str]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answers.append(_get(port, "/readyz"))
            if answers[-1][0] == 200:
                break
            time.sleep(0.05)
        served = [a for a in answers if a[0] != 0]
        assert served and served[-1][0] == 200, answers[-5:]
        assert f"consuming 1 partitions ({topic}/0)" in served[-1][1]
        assert served[0][0] == 503 and served[0][1].startswith("not ready"), served[0]
        status, body = _get(port, "/healthz")
        assert (status, body.split(",")[0]) == (200, "ok: idle"), body  # idle is alive
        # one record whose task hangs 7 s (no progress): unhealthy after --stuck-after 2
        produce_json(bootstrap, topic, [{"id": 1}])
        seen: list[tuple[float, int, str]] = []
        start = time.monotonic()
        while time.monotonic() - start < 30:
            status, body = _get(port, "/healthz")
            seen.append((time.monotonic() - start, status, body.strip()))
            if status == 503:
                break
            time.sleep(0.2)
        assert seen[-1][1] == 503 and seen[-1][2].startswith("stuck: 1 executions in flight"), \
            seen[-3:]
        # the task ends: healthy again, the execution done
        while time.monotonic() - start < 40:
            status, body = _get(port, "/healthz")
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200 and "1 executions done" in body, body
    finally:
        _out, err = _stop(proc)
    assert proc.returncode == 0, err[-3000:]
    # SIGTERM: not ready while stopping is covered by the unit tests (health.ready)
    history = latest_by_id(log_documents(bootstrap, log_topic))
    assert [d["state"] for d in history.values()] == ["SUCCESS"]
