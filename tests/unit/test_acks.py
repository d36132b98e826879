"""Share-group ack rules (``waxflow.acks.decide``) and the share consumer's config split."""

from __future__ import annotations

import pytest

from waxflow.acks import decide
from waxflow.connectors.kafka_share import split_conf
from waxflow.errors import ConfigConflict


@pytest.mark.parametrize("state", ["SUCCESS", "WARNING"])
@pytest.mark.parametrize("delivery", [1, 3, 5])
def test_done_executions_are_accepted_at_any_delivery(state: str, delivery: int) -> None:
    assert decide(state, False, delivery, 5) == "ACCEPT"


def test_filtered_records_are_accepted() -> None:
    assert decide(None, False, 1, 5) == "ACCEPT"


def test_failures_are_released_below_the_limit_then_rejected() -> None:
    assert [decide("FAILED", False, d, 3) for d in (1, 2, 3, 4)] == [
        "RELEASE", "RELEASE", "REJECT", "REJECT"]


def test_one_delivery_allowed_rejects_the_first_failure() -> None:
    assert decide("FAILED", False, 1, 1) == "REJECT"


def test_non_terminal_state_counts_as_a_failure() -> None:
    assert decide("RUNNING", False, 1, 5) == "RELEASE"
    assert decide("RUNNING", False, 5, 5) == "REJECT"


@pytest.mark.parametrize("state", ["SKIPPED", None, "SUCCESS"])
def test_poison_records_are_rejected_at_once(state: str | None) -> None:
    assert decide(state, True, 1, 5) == "REJECT"
    assert decide("SKIPPED", False, 1, 5) == "REJECT"


def test_max_deliveries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_deliveries"):
        decide("FAILED", False, 1, 0)


BASE = {"bootstrap.servers": "b:9092"}


def test_split_defaults() -> None:
    client, group = split_conf(dict(BASE), "g1", 500)
    assert client == {"bootstrap.servers": "b:9092", "group.id": "g1",
                      "share.acknowledgement.mode": "explicit", "max.poll.records": 500}
    assert group == {"share.auto.offset.reset": "earliest",
                     "share.isolation.level": "read_committed"}


def test_group_configs_leave_the_client_conf() -> None:
    client, group = split_conf({**BASE, "share.auto.offset.reset": "latest",
                                "share.record.lock.duration.ms": 60000,
                                "max.poll.records": 20, "security.protocol": "SSL"}, "g", 500)
    assert not any(k.startswith("share.") and k != "share.acknowledgement.mode"
                   for k in client)
    assert client["max.poll.records"] == 20 and client["security.protocol"] == "SSL"
    assert group["share.auto.offset.reset"] == "latest"
    assert group["share.record.lock.duration.ms"] == "60000"


def test_consumer_group_keys_become_group_configs() -> None:
    client, group = split_conf({**BASE, "auto.offset.reset": "smallest",
                                "isolation.level": "read_uncommitted",
                                "enable.auto.commit": False}, "g", 500)
    assert "auto.offset.reset" not in client and "isolation.level" not in client
    assert "enable.auto.commit" not in client
    assert group == {"share.auto.offset.reset": "earliest",
                     "share.isolation.level": "read_uncommitted"}
    _, explicit = split_conf({**BASE, "auto.offset.reset": "earliest",
                              "share.auto.offset.reset": "latest"}, "g", 500)
    assert explicit["share.auto.offset.reset"] == "latest"


@pytest.mark.parametrize("key,value", [("enable.auto.commit", True),
                                       ("share.acknowledgement.mode", "implicit")])
def test_settings_that_break_acks_by_outcome_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigConflict, match=key):
        split_conf({**BASE, key: value}, "g", 500)
