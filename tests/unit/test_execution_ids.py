"""A record's execution id is the same whichever way it is computed (G2: a replay keeps it)."""

from __future__ import annotations

from waxflow.execution import execution_id, record_ids


def test_record_ids_are_execution_ids() -> None:
    of = record_ids("team.ns", "flow-1")
    for topic, partition, offset in (("orders", 0, 0), ("a.b-c_d", 7, 123_456_789_012),
                                     ("ü topic", 2, 5), ("", 0, 1)):
        assert of(topic, partition, offset) == execution_id("team.ns", "flow-1", topic,
                                                            partition, offset)
    assert record_ids("ns", "f")("t", 0, 1) != record_ids("ns", "g")("t", 0, 1)
