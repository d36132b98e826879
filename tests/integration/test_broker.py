"""The broker the project starts is real and ready: keys, headers, transactions, share
groups, and committed offsets that survive a restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import (
    AcknowledgeType,
    Consumer,
    Producer,
    ShareConsumer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from tests.kafka_helpers import committed, create_topic, read_all
from waxflow.connectors.broker import LocalBroker, free_port

pytestmark = pytest.mark.integration


def test_produce_consume_keys_and_headers(bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(3)
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(30):
        p.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=i % 3,
                  headers=[("h", f"x{i}".encode())])
    assert p.flush(10) == 0
    got = read_all(bootstrap, topic)
    assert sorted((m.key(), m.value(), m.partition()) for m in got) == sorted(
        (f"k{i}".encode(), f"v{i}".encode(), i % 3) for i in range(30))
    assert all(m.headers() == [("h", b"x" + m.value()[1:])] for m in got)


def test_transactions_read_committed(bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(1)
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{uuid.uuid4()}"})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=f"ok{i}".encode())
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=f"bad{i}".encode())
    p.flush(10)
    p.abort_transaction(30)
    committed_view = [m.value() for m in read_all(bootstrap, topic, isolation="read_committed")]
    raw_view = [m.value() for m in read_all(bootstrap, topic)]
    assert committed_view == [f"ok{i}".encode() for i in range(5)]
    assert {f"bad{i}".encode() for i in range(5)} <= set(raw_view)


def _share_group(admin: AdminClient, group: str) -> None:
    res = ConfigResource(ResourceType.GROUP, group, incremental_configs=[ConfigEntry(
        "share.auto.offset.reset", "earliest",
        incremental_operation=AlterConfigOpType.SET)])
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result(timeout=30)


def test_share_consumer_accept_release_reject(
    bootstrap: str, admin: AdminClient, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(1)
    group = f"share-{uuid.uuid4().hex[:8]}"
    _share_group(admin, group)
    p = Producer({"bootstrap.servers": bootstrap})
    for v in (b"accept", b"release", b"reject"):
        p.produce(topic, value=v)
    assert p.flush(10) == 0
    c = ShareConsumer({"bootstrap.servers": bootstrap, "group.id": group,
                       "share.acknowledgement.mode": "explicit"})
    c.subscribe([topic])
    deliveries: list[tuple[bytes, int]] = []
    deadline = time.monotonic() + 60
    quiet_until: float | None = None
    try:
        while time.monotonic() < deadline:
            batch = c.poll(0.5) or []
            for m in batch:
                assert m.error() is None, m.error()
                deliveries.append((m.value(), m.delivery_count()))
                if m.value() == b"release" and m.delivery_count() == 1:
                    c.acknowledge(m, AcknowledgeType.RELEASE)
                elif m.value() == b"reject":
                    c.acknowledge(m, AcknowledgeType.REJECT)
                else:
                    c.acknowledge(m, AcknowledgeType.ACCEPT)
            if batch:
                assert all(err is None for err in c.commit_sync().values())
            if (b"release", 2) in deliveries and quiet_until is None:
                quiet_until = time.monotonic() + 4  # rejected/accepted must not come back
            if quiet_until is not None and time.monotonic() > quiet_until:
                break
    finally:
        c.close()
    assert sorted(deliveries) == [(b"accept", 1), (b"reject", 1), (b"release", 1),
                                  (b"release", 2)]


def test_committed_offsets_survive_restart(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "b", port=free_port(), controller_port=free_port())
    broker.start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        create_topic(admin, "survive", 2)
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g-survive"})
        c.commit(offsets=[TopicPartition("survive", 0, 7), TopicPartition("survive", 1, 3)],
                 asynchronous=False)
        c.close()
        broker.stop()
        assert not broker.running()
        broker.start()
        assert committed(broker.bootstrap, "g-survive", "survive", 2) == {0: 7, 1: 3}
    finally:
        broker.stop(wipe=True)


def test_cli_start_status_stop_uses_cached_jars(tmp_path: Path) -> None:
    """A second start needs no Maven (hence no network): run it with mvn off the PATH."""
    waxflow = str(Path(sys.executable).with_name("waxflow"))
    ports = ["--port", str(free_port()), "--controller-port", str(free_port())]

    def run(*args: str, path: str | None = None, data: str = "b"
            ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        if path is not None:
            env["PATH"] = path
        return subprocess.run([waxflow, "broker", *args, *ports,
                               "--data-dir", str(tmp_path / data)],
                              capture_output=True, text=True, env=env, timeout=120)

    first = run("start")
    assert first.returncode == 0, first.stderr
    try:
        assert run("status").returncode == 0
        assert run("stop").returncode == 0
        assert run("status").returncode == 1
        java_only = tmp_path / "bin"
        java_only.mkdir()
        (java_only / "java").symlink_to(os.path.realpath("/usr/bin/java"))
        second = run("start", path=str(java_only))
        assert second.returncode == 0, second.stderr
        assert "broker started" in second.stdout
        taken = run("start", data="other")
        assert taken.returncode == 1 and "taken" in taken.stderr
        assert "Traceback" not in taken.stderr
    finally:
        run("stop", "--wipe")
    assert not (tmp_path / "b").exists()
