"""The checkpoint: the commit order of a consumer-group flow, and where each guarantee lives.

Model: Quix Streams' checkpoint — the order in which work becomes durable is written down in
one place. Two orders, one per way of running executions:

**Pipelined** (every ``kafka.RealtimeTrigger`` flow: consumer groups, with or without
transactional ``kafka.Produce``, and share groups; model: Confluent's Parallel Consumer).
Executions outlive the step that started them, and finish in any order:

1. the source (``kafka_source``) registers every offset it reads in the partition's
   :class:`~waxflow.progress.PartitionProgress` before it hands the records on;
2. the execute step (``execute``) starts each record's execution in the flow's
   :class:`~waxflow.operators.pipeline.Pipeline` and returns at once; a retry delay pauses
   the execution on a timer; ``keyOrdering`` holds an execution until the one before it of
   the same key is terminal;
3. an execution is *done* when its terminal document (and its at-least-once Produce
   records) are acknowledged by the broker: only then is its offset marked done (a FAILED
   execution under ``onFailure: STOP`` never is: the source raises the stop at its next
   read). The pipeline's quiet producers report failures only, so acknowledgements are
   learnt at the snapshot (step 4), before the commit point is taken: the snapshot first
   waits until their queues are empty and marks done what was acknowledged
   (``Pipeline._settle``);
4. at every epoch end the source's ``snapshot()`` takes the partition's *lowest unfinished
   offset* (the next offset to read when nothing is pending), and the first ``next_batch()``
   after it commits that offset; the snapshot (recovery on) is the same offset.

With transactional ``kafka.Produce`` tasks (exactly once, G3), step 3 and 4 become
(:mod:`waxflow.operators.transactions`):

3. a Produce task buffers its records in the execution; a done execution's records are
   handed to the worker's :class:`~waxflow.operators.transactions.Transactions` *before*
   its offset is marked done;
4. at every epoch end the first ``snapshot()`` of a worker's partitions runs one transaction
   for all of them: the records of the executions below each partition's lowest unfinished
   offset, and those offsets (``send_offsets_to_transaction``), committed together; every
   partition's snapshot returns the offset so committed (the consumer commits nothing).
   So a transaction covers exactly the executions below the offsets it commits: done
   executions above a slow one keep their records buffered until it is done, and a crash
   replays them without their outputs ever having been visible.

Share groups (no offsets to commit) follow steps 2 and 3: a done execution hands its record's
ack by outcome to the member consumer that polled it (``kafka_share.ShareAck``), sent at
the source's next read; a consumer polls again only when its whole batch is acked, so each
worker reads through several members and a held batch holds only its own member. A retry
that would outlive the record lock RELEASEs the record (after the document saying so).

So a slow or retrying record holds back only the commit of its own offset; a crash replays
the unfinished records and those after them, under the same ids (G2). The source stops
reading while ``$WAXFLOW_MAX_IN_FLIGHT`` executions are unfinished in the process, or
``$WAXFLOW_MAX_PENDING`` offsets of a partition wait behind an unfinished one (memory stays
bounded). A stopping job abandons executions not started or paused for a retry (they
replay) and waits for the running ones.

**Batch-synchronous** (``kafka.Trigger`` batches, schedules). For every epoch, in this order:

1. the execute step (``microbatch`` / ``schedule``) hands its items to the
   flow's :class:`~waxflow.operators.executor.Executor`, which returns only when every
   execution is *done*: terminal, its terminal document acknowledged by the broker, and
   its Kafka transaction (outputs + consumed offsets) committed;
2. :class:`DoneSink` (this module) receives, per source partition, the next offset whose
   records are all done. It is a stateful ``FixedPartitionedSink``, so with recovery on the
   epoch's snapshot (and hence the next epoch) waits for it as well as for the source;
3. the source (``kafka_source`` / ``kafka_batch``) records the next offset to read in
   ``snapshot()`` at the epoch end; Bytewax starts the next epoch only after this one passed
   every step;
4. the first ``next_batch()`` of the next epoch commits that offset to the consumer group.

In both, never in ``close()`` or at EOF: the partition is dropped right after its last
snapshot, so that offset is committed by the next run.

The Bytewax behaviour this rests on (bytewax 0.21.1, read in its source and measured with
kill tests): a source partition's ``snapshot()`` runs at every epoch end, and its
``next_batch()`` for epoch e+1 runs only after epoch e passed all outputs (recovery off; with
recovery on, only stateful outputs and snapshots are waited for — hence the stateful
:class:`DoneSink`). Stateless steps keep items on the worker that produced them, so a share
group's outcomes return to the source partition that holds the ack. ``-s`` takes whole
seconds; sub-second epochs only through ``bytewax.run.cli_main(epoch_interval=...)``.

So a committed offset never runs ahead of a done execution (G1), and a kill anywhere replays
from the last commit under the same ids (G2).

Where each guarantee is enforced (file: function) and which test proves it on the broker:

- **G1 no loss** (commit only what is done): ``operators/pipeline.py: Pipeline._delivered``,
  ``Pipeline._settle`` (quiet mode: called by ``_GroupPartition.snapshot`` through
  ``Progress.settle_point`` before the commit point is taken) and
  ``waxflow/progress.py: PartitionProgress.commit_point`` (pipelined),
  ``operators/executor.py: Executor.run`` (done = delivered),
  ``connectors/kafka_source.py: _GroupPartition.snapshot/next_batch`` (commit after the
  snapshot), ``connectors/kafka_batch.py: _BatchPartition.snapshot`` (only positions after
  emitted batches) — ``tests/integration/test_kill_realtime.py``, ``test_no_stall.py``,
  ``test_batch_trigger.py``, ``test_quiet_settle.py``.
- **G2 one history per record**: ``waxflow/execution.py: execution_id`` (deterministic),
  ``connectors/kafka_batch.py: _BatchPartition._write_plan`` (a replayed batch is cut the
  same) — ``test_kill_realtime.py``, ``test_batch_trigger.py``, ``test_etl_embedded.py``.
- **G3 Kafka→Kafka exactly once**: ``operators/transactions.py: Transactions._commit``
  (pipelined: the records of the executions below the committed offsets) and
  ``connectors/kafka_output.py: BatchScope.commit`` (``send_offsets_to_transaction``, also
  called by ``Executor.run``) — ``test_exactly_once.py``, ``test_no_stall.py``
  (``*-exactly-once``: SIGKILL with slow executions in flight).
- **G4 share groups ack by outcome**: ``waxflow/acks.py: decide``,
  ``connectors/kafka_share.py: ShareAck`` and ``_Member.send_decided`` (a member polls
  only when its batch is acked) —
  ``test_share_groups.py``, ``test_share_no_stall.py``.
- **G5 bad input**: ``operators/deserialize.py: decode`` (``onSerdeError``),
  ``operators/execute.py: RecordExecutions.job`` (SKIPPED, DLQ) — ``test_serde_errors.py``.
- **G6 task failure**: ``operators/engine.py: Engine.advance`` (retries — paused on a timer
  when pipelined —, FAILED, ``errors`` tasks), ``Executor.check_stop`` and
  ``Pipeline._delivered`` (``onFailure: STOP``) — ``test_task_failures.py``,
  ``test_no_stall.py``.
"""

from __future__ import annotations

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

DoneOffsets = dict[str, int]


class _DonePartition(StatefulSinkPartition[tuple[str, int], DoneOffsets]):
    """Keeps the highest done offset per source partition (its snapshot is that map)."""

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
