"""broker_watch: the consumers' give-up bound, idle clock and retry (no broker needed: the
outage is noted by hand; the probe points at a closed port, so it never closes it)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, KafkaException

from waxflow.connectors import broker_watch
from waxflow.connectors.broker import free_port
from waxflow.connectors.deliveries import OUTAGE
from waxflow.errors import SourceStop


@pytest.fixture
def outage(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("WAXFLOW_BROKER_GIVE_UP", "0.3")
    monkeypatch.setattr(broker_watch._WATCH, "conf",
                        {"bootstrap.servers": f"127.0.0.1:{free_port()}",
                         "logger": logging.getLogger("waxflow.test.probe")})
    monkeypatch.setattr(broker_watch._WATCH, "back_at", 0.0)
    OUTAGE.up()
    yield
    OUTAGE.up()
    broker_watch.check("reset")  # notes the end of the outage


def test_check_stops_once_the_bound_passed(outage: None) -> None:
    broker_watch.check("the test source")  # no outage: nothing
    broker_watch.gone("the test source", "Connection refused")
    broker_watch.check("the test source")  # within the bound
    time.sleep(0.4)
    with pytest.raises(SourceStop, match=r"unreachable for 0s \(over \$WAXFLOW_BROKER_GIVE_UP"
                                         r"=0s\) while the test source waited"):
        broker_watch.check("the test source")


def test_outage_time_is_not_idle_time(outage: None) -> None:
    before = time.monotonic() - 100
    assert broker_watch.idle_since(before) == before
    broker_watch.gone("src", "down")
    assert broker_watch.idle_since(before) >= time.monotonic() - 0.1
    OUTAGE.up()
    broker_watch.check("src")  # sees the outage closed
    assert broker_watch.idle_since(before) >= time.monotonic() - 0.1


def test_retry_waits_out_outage_errors_and_raises_others(outage: None) -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "down"))
        return "ok"

    assert broker_watch.retry(flaky, "commit") == "ok"
    assert len(calls) == 2
    assert OUTAGE.since is None  # the success closed the outage

    def bad() -> None:
        raise KafkaException(KafkaError(KafkaError.INVALID_CONFIG, "bad"))

    with pytest.raises(KafkaException):
        broker_watch.retry(bad, "commit")


def test_admin_conf_keeps_connection_settings_only() -> None:
    conf = {"bootstrap.servers": "b:1", "group.id": "g", "sasl.password": "x",
            "auto.offset.reset": "earliest", "on_commit": print, "logger": "l",
            "share.acknowledgement.mode": "explicit", "queued.min.messages": 10}
    assert broker_watch.admin_conf(conf) == {"bootstrap.servers": "b:1",
                                             "sasl.password": "x", "logger": "l"}


def test_a_source_about_to_stop_idle_asks_whether_the_broker_is_there(outage: None) -> None:
    """A share consumer that never connected reports no outage: the idle stop asks the
    broker first; no answer notes the outage, which restarts the idle clock."""
    assert OUTAGE.since is None
    before = time.monotonic()
    assert broker_watch.reachable("the test source", timeout=1.0) is False
    assert OUTAGE.since is not None
    assert broker_watch.idle_since(before - 100) >= before  # the time without it is not idle
