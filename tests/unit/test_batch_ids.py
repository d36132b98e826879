"""What a ``kafka.Trigger`` batch's execution id derives from (:meth:`Batch.id_source`)."""

from __future__ import annotations

from waxflow.connectors.kafka_batch import Batch
from waxflow.connectors.kafka_share import _batch_of
from waxflow.records import RawRecord


def delivery(*coords: tuple[int, int]) -> Batch:
    return _batch_of([RawRecord("t", p, o, None, b"v", 0, (), 1, 7) for p, o in coords], 7)


def test_a_consumer_group_batch_keeps_its_offset_ranges() -> None:
    batch = Batch(offsets={"t/1": (5, 9), "t/0": (0, 4)})
    assert batch.id_source() == "t/0:0-4,t/1:5-9"  # the ids of existing histories


def test_a_share_delivery_is_named_by_its_records() -> None:
    batch = delivery((0, 2), (1, 0), (0, 0))
    assert batch.offsets == {"t/0": (0, 2), "t/1": (0, 0)}
    assert batch.ends == {"t/0": 3, "t/1": 1}
    assert batch.origin == 7 and len(batch.records) == 3
    # the same records delivered again, in another order: the same id
    assert delivery((0, 0), (0, 2), (1, 0)).id_source() == batch.id_source()
    # the same ranges with a record less (t/0@1 went to another member): another id
    full = delivery((0, 0), (0, 1), (0, 2), (1, 0))
    assert full.offsets == batch.offsets and full.id_source() != batch.id_source()
