"""Metrics from execution documents and librdkafka statistics; /healthz and /readyz rules."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from waxflow.connectors import health, metrics, shutdown
from waxflow.connectors.broker import free_port
from waxflow.execution import Attempt, Execution, State, TaskRun, TriggerInfo, now


@pytest.fixture
def enabled(monkeypatch: pytest.MonkeyPatch) -> Iterator[metrics._State]:
    """Metrics on, with a fresh process state (the registry's counters only grow: tests
    compare differences)."""
    state = metrics._State()
    monkeypatch.setattr(metrics, "STATE", state)
    metrics.enable("ns.unit", topics=["orders"])
    yield state
    state.enabled = False


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def record_doc(state: State, offset: int, *, attempts: int = 1, task_type: str = "core.Set",
               outputs: dict[str, Any] | None = None) -> Execution:
    e = Execution(id=f"id{offset}", namespace="ns", flow_id="unit",
                  trigger=TriggerInfo(type="kafka.RealtimeTrigger", topic="orders",
                                      partition=0, offset=offset))
    run = TaskRun(task_id="t", type=task_type, parent=None, state=state, outputs=outputs)
    for i in range(attempts):
        last = i == attempts - 1
        run.attempts.append(Attempt(state=state if last else State.FAILED, start=now(),
                                    end=now()))
    e.add_task_run(run)
    e.finish(state)
    return e


def test_done_documents_count_executions_tasks_retries_and_rows(enabled: metrics._State
                                                                 ) -> None:
    ok0 = value("waxflow_executions_total", flow="ns.unit", state="SUCCESS")
    retries0 = value("waxflow_task_retries_total", flow="ns.unit", task="t")
    rows0 = value("waxflow_rows_loaded_total", flow="ns.unit", task="t", type="duckdb.Load")
    skipped0 = value("waxflow_records_skipped_total", flow="ns.unit", topic="orders")
    for i, (state, attempts, kind, out) in enumerate([
        (State.SUCCESS, 3, "core.Set", None),
        (State.SUCCESS, 1, "duckdb.Load", {"rows": 7}),
        (State.SKIPPED, 1, "core.Set", None),
    ]):
        doc = record_doc(state, i, attempts=attempts, task_type=kind, outputs=out)
        running = Execution(id=doc.id, namespace="ns", flow_id="unit", trigger=doc.trigger,
                            state=State.RUNNING)
        assert metrics.document_written(doc.id, running.to_json()) is False
        assert doc.id in enabled.running
        assert metrics.is_terminal(doc.to_json())
        metrics.document_done(doc.id, doc.to_json())
        assert doc.id not in enabled.running
    assert value("waxflow_executions_total", flow="ns.unit", state="SUCCESS") - ok0 == 2
    assert value("waxflow_task_retries_total", flow="ns.unit", task="t") - retries0 == 2
    assert value("waxflow_rows_loaded_total", flow="ns.unit", task="t",
                 type="duckdb.Load") - rows0 == 7
    assert value("waxflow_records_skipped_total", flow="ns.unit", topic="orders") \
        - skipped0 == 1
    assert enabled.done == 3


def test_batch_documents_count_records_and_batch_sizes(enabled: metrics._State) -> None:
    e = Execution(id="b1", namespace="ns", flow_id="unit", trigger=TriggerInfo(
        type="kafka.Trigger", offsets={"orders/0": [0, 99], "orders/1": [0, 9]},
        messages_count=105, skipped_count=5))
    e.finish(State.SUCCESS)
    consumed0 = value("waxflow_records_consumed_total", flow="ns.unit", topic="orders")
    batches0 = value("waxflow_batch_records_count", flow="ns.unit", kind="trigger")
    metrics.document_done(e.id, e.to_json())
    assert value("waxflow_records_consumed_total", flow="ns.unit", topic="orders") \
        - consumed0 == 110
    assert value("waxflow_batch_records_count", flow="ns.unit", kind="trigger") - batches0 == 1


def test_hooks_are_no_ops_when_metrics_are_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "STATE", metrics._State())
    total = value("waxflow_kafka_transactions_total", flow="", outcome="commit")
    metrics.transaction("commit")
    metrics.dlq_records("dlq")
    metrics.commit_latency(0.1)
    metrics.commit_sent("t/0")
    metrics.commit_answered("t/0")
    metrics.batch_size(3)
    assert value("waxflow_kafka_transactions_total", flow="", outcome="commit") == total


def test_hooks_feed_their_metrics(enabled: metrics._State) -> None:
    commits0 = value("waxflow_offset_commit_seconds_count", flow="ns.unit")
    metrics.commit_sent("orders/0")
    metrics.commit_answered("orders/0", ok=True)
    metrics.commit_answered("orders/0", ok=True)  # no request outstanding: nothing
    assert value("waxflow_offset_commit_seconds_count", flow="ns.unit") - commits0 == 1
    txn0 = value("waxflow_kafka_transactions_total", flow="ns.unit", outcome="abort")
    metrics.transaction("abort")
    assert value("waxflow_kafka_transactions_total", flow="ns.unit", outcome="abort") \
        - txn0 == 1
    step0 = value("waxflow_batch_records_count", flow="ns.unit", kind="step")
    metrics.batch_size(250)
    assert value("waxflow_batch_records_count", flow="ns.unit", kind="step") - step0 == 1
    dlq0 = value("waxflow_dlq_records_total", flow="ns.unit", topic="orders.dlq")
    metrics.dlq_records("orders.dlq", 2)
    assert value("waxflow_dlq_records_total", flow="ns.unit", topic="orders.dlq") - dlq0 == 2


def _stats(lag: int, fetch: str = "active", partition: str = "0") -> str:
    return json.dumps({"type": "consumer", "cgrp": {"state": "up"}, "topics": {
        "orders": {"partitions": {
            partition: {"fetch_state": fetch, "consumer_lag": lag},
            "-1": {"fetch_state": "none", "consumer_lag": -1}}},
        "other": {"partitions": {"0": {"fetch_state": "active", "consumer_lag": 4}}}}})


def test_statistics_give_lag_and_fetched_partitions(enabled: metrics._State,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    metrics.kafka_stats(_stats(12))
    assert value("waxflow_consumer_lag", flow="ns.unit", topic="orders", partition="0") == 12
    assert value("waxflow_consumer_lag", flow="ns.unit", topic="other", partition="0") == 4
    assert metrics.fetching_partitions() == [("orders", 0)]  # trigger topics only
    metrics.kafka_stats(_stats(-1))  # unknown (no committed offset): the last value stays
    assert value("waxflow_consumer_lag", flow="ns.unit", topic="orders", partition="0") == 12
    metrics.kafka_stats("not json")  # never raises into the client
    metrics.kafka_stats(json.dumps({"type": "producer"}))
    # a client that stopped reporting (closed) drops out after a few intervals
    later = time.monotonic() + metrics.STALE_INTERVALS * enabled.stats_ms / 1000 + 2
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert value("waxflow_consumer_lag", flow="ns.unit", topic="orders", partition="0") == 0
    assert metrics.fetching_partitions() == []


def test_share_acks_are_read_from_the_share_source(enabled: metrics._State) -> None:
    from collections import Counter

    from waxflow.connectors import kafka_share

    accept0 = value("waxflow_share_acks_total", flow="ns.unit", type="ACCEPT")
    kafka_share.STATS.add(acks=Counter({"ACCEPT": 3, "REJECT": 1}))
    assert value("waxflow_share_acks_total", flow="ns.unit", type="ACCEPT") - accept0 == 3


def test_liveness_idle_busy_and_stuck(enabled: metrics._State,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    h = health.Health(stuck_after=5)
    assert h.live()[0] and h.live()[1].startswith("ok: idle")
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # the module both read
    running = Execution(id="x", namespace="ns", flow_id="unit",
                        trigger=TriggerInfo(type="t"), state=State.RUNNING)
    metrics.document_written("x", running.to_json())
    clock[0] += 4
    assert h.live()[0]
    clock[0] += 2  # nothing finished for 6 s > 5 s with work in flight
    ok, why = h.live()
    assert not ok and why.startswith("stuck: 1 executions in flight"), why
    running.finish(State.SUCCESS)
    metrics.document_done("x", running.to_json())
    assert h.live()[0]
    # one execution hangs while others keep finishing: its offset holds the commits back
    metrics.document_written("slow", Execution(id="slow", namespace="ns", flow_id="unit",
                                               trigger=TriggerInfo(type="t"),
                                               state=State.RUNNING).to_json())
    for i in range(7):
        clock[0] += 1
        other = Execution(id=f"o{i}", namespace="ns", flow_id="unit",
                          trigger=TriggerInfo(type="t"), state=State.RUNNING)
        metrics.document_written(other.id, other.to_json())
        other.finish(State.SUCCESS)
        metrics.document_done(other.id, other.to_json())
    ok, why = h.live()
    assert not ok and why.startswith("stuck: an execution has been in flight for 7s"), why


def test_readiness_rules(enabled: metrics._State, monkeypatch: pytest.MonkeyPatch) -> None:
    h = health.Health(rule="partitions")
    assert h.ready() == (False, "not ready: the dataflow has not started")
    h.running = True
    assert not h.ready()[0]
    metrics.kafka_stats(_stats(0, fetch="offset-query"))
    assert not h.ready()[0]  # assigned, not fetching yet
    metrics.kafka_stats(_stats(0))
    assert h.ready() == (True, "ready: consuming 1 partitions (orders/0)")
    share = health.Health(rule="share")
    share.running = True
    assert share.ready()[0]  # the statistics said the group session is up
    monkeypatch.setattr(shutdown, "requested", lambda: "SIGTERM")
    assert h.ready() == (False, "not ready: stopping (SIGTERM)")


def test_the_metrics_port_serves_three_paths(enabled: metrics._State,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "HEALTH", health.Health())
    port = free_port()
    server = health.serve(port, "127.0.0.1")
    try:
        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        status, body = get("/metrics")
        assert status == 200 and 'waxflow_info{flow="ns.unit"' in body
        assert "process_resident_memory_bytes" in body
        assert get("/healthz")[0] == 200
        assert get("/readyz")[0] == 503
        assert get("/nope")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_a_metrics_port_in_use_is_a_one_line_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from waxflow.dataflows import runner
    from waxflow.errors import WaxflowError

    monkeypatch.setattr(metrics, "STATE", metrics._State())
    monkeypatch.setattr(health, "HEALTH", health.Health())
    flow = tmp_path / "flow.yaml"
    flow.write_text("id: f\nnamespace: n\ntriggers:\n  - {id: t, type: kafka.RealtimeTrigger, "
                    "topic: orders, groupId: g}\ntasks:\n  - {id: a, type: core.Log, "
                    "message: hi}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        monkeypatch.setenv("WAXFLOW_METRICS_HOST", "127.0.0.1")
        with pytest.raises(WaxflowError, match=f"cannot serve metrics on port {port}: "):
            runner.serve_metrics(str(flow), port, process_id=None, stuck_after=5)
    assert metrics.STATE.topics == ["orders"] and health.HEALTH.rule == "partitions"


def test_kafka_transactions_are_counted(enabled: metrics._State) -> None:
    """A task's own transaction on librdkafka's in-process mock cluster: commit counted."""
    from waxflow.connectors.kafka_output import TaskTransaction

    conf = {"test.mock.num.brokers": 1, "transaction.timeout.ms": 10000}
    commits0 = value("waxflow_kafka_transactions_total", flow="ns.unit", outcome="commit")
    txn = TaskTransaction(conf)
    txn.produce("out", b"k", b"v")
    txn.wait(30)
    assert value("waxflow_kafka_transactions_total", flow="ns.unit", outcome="commit") \
        - commits0 == 1
