"""The commit order, in one place (the checkpoint of a consumer-group flow).

For every epoch, in this order:

1. ``waxflow.operators.execute``: every execution of the epoch's records reaches a terminal state
   and its terminal document is acknowledged by the broker (the step returns only then).
2. :class:`DoneSink` (this module) receives, per source partition, the next offset whose
   records are all done. It is a stateful ``FixedPartitionedSink``, so with recovery on the
   epoch's snapshot (and hence the next epoch) waits for it as well as for the source.
3. ``waxflow.connectors.kafka_source``: at the epoch end ``snapshot()`` records the next offset to
   read; Bytewax starts the next epoch only after this one passed every step.
4. The first ``next_batch()`` of the next epoch commits that offset to the consumer group.

So a committed offset never runs ahead of a done execution (G1); a kill anywhere replays
from the last commit and the deterministic ids keep one history per record (G2).
"""

from __future__ import annotations

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

DoneOffsets = dict[str, int]


class _DonePartition(StatefulSinkPartition[tuple[str, int], DoneOffsets]):
    def __init__(self, resume: DoneOffsets | None) -> None:
        self.done: DoneOffsets = dict(resume or {})

    def write_batch(self, values: list[tuple[str, int]]) -> None:
        for part, offset in values:
            if offset > self.done.get(part, -1):
                self.done[part] = offset

    def snapshot(self) -> DoneOffsets:
        return dict(self.done)


class DoneSink(FixedPartitionedSink[tuple[str, int], DoneOffsets]):
    """Terminal step of a flow: the highest done offset per source partition."""

    def list_parts(self) -> list[str]:
        return ["done"]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: DoneOffsets | None) -> _DonePartition:
        return _DonePartition(resume_state)
