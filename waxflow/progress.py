"""Per-partition progress of a realtime flow whose executions finish out of order.

Model: Confluent's Parallel Consumer. The source registers every offset it reads
(:meth:`PartitionProgress.read`); the executor marks an offset done once its execution is
*done* (terminal document acknowledged by the broker) with :meth:`PartitionProgress.done`.
:meth:`PartitionProgress.commit_point` is the lowest offset not yet done (or the next offset
to read when nothing is pending): every record below it is done, so committing it never runs
ahead of the work (G1), and a crash replays exactly the unfinished records and those after
them, under the same execution ids (G2).

Offsets the source never hands out (transaction markers, compacted gaps) are never pending,
so they never hold the commit point back. Thread-safe: the source reads on a worker thread,
executions finish on pool, timer and delivery threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class PartitionProgress:
    """The offsets of one Kafka partition read but not yet done."""

    __slots__ = ("_done", "_lock", "_next", "_pending", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._pending: deque[int] = deque()  # offsets read, in order, not yet retired
        self._done: set[int] = set()  # done offsets not yet at the front of ``_pending``
        self._next: int | None = None  # next offset to read

    def read(self, offsets: list[int], next_offset: int) -> None:
        """Register offsets the source just read (ascending) and the next one to read."""
        with self._lock:
            self._pending.extend(offsets)
            self._next = next_offset

    def seek(self, next_offset: int | None) -> None:
        """Where reading starts (nothing is pending yet)."""
        with self._lock:
            self._next = next_offset

    def done(self, offset: int) -> None:
        """The execution of ``offset`` is done."""
        with self._lock:
            pending = self._pending
            if pending and pending[0] == offset:
                pending.popleft()
                done = self._done
                while pending and pending[0] in done:
                    done.discard(pending.popleft())
            else:
                self._done.add(offset)

    def commit_point(self) -> int | None:
        """The lowest offset not done yet, or the next offset to read when none is pending
        (None before anything is known)."""
        with self._lock:
            return self._pending[0] if self._pending else self._next

    @property
    def in_flight(self) -> int:
        """Records read and not yet done (done ones behind an unfinished one included)."""
        return len(self._pending)


class Progress:
    """The partitions of one flow in one process, and the error that must stop the job.

    The error slot carries what an execution found after the step that started it returned
    (a document the broker refused, ``onFailure: STOP``): the source raises it at its next
    read, before anything past the failed execution can be committed.
    """

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], PartitionProgress] = {}
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        #: serves the delivery reports of the executions' producers on the reading thread
        #: (set by the pipeline; see :meth:`read_point`)
        self.serve: Callable[[], None] | None = None
        #: learns which executions' deliveries the broker acknowledged and marks their
        #: offsets done (set by the pipeline; see :meth:`settle_point`)
        self.settle: Callable[[], None] | None = None
        #: executions started and not terminal yet (the sources stop reading at a bound)
        self.unfinished = 0
        #: of those, paused until a retry is due (a stopping job does not wait for them)
        self.paused = 0

    def pause(self, delta: int) -> None:
        """An execution paused for a retry (+1) or resumed (-1)."""
        with self._lock:
            self.paused += delta

    @property
    def running(self) -> int:
        """Executions a stopping job waits for: started, not paused, not terminal."""
        return self.unfinished - self.paused

    def started(self) -> None:
        """One more execution is running (or waiting for its key or its retry)."""
        with self._lock:
            self.unfinished += 1

    def finished(self) -> None:
        """An execution became terminal."""
        with self._lock:
            self.unfinished -= 1

    def part(self, topic: str, partition: int) -> PartitionProgress:
        """The progress of one partition (created on first use)."""
        key = (topic, partition)
        got = self._parts.get(key)
        if got is None:
            with self._lock:
                got = self._parts.setdefault(key, PartitionProgress(f"{topic}/{partition}"))
        return got

    def fail(self, error: BaseException) -> None:
        """Stop the job at the source's next read (the first error wins)."""
        with self._lock:
            if self.error is None:
                self.error = error

    def check(self) -> None:
        """Raise the error that must stop the job, if any."""
        if self.error is not None:
            raise self.error

    def settle_point(self) -> None:
        """A source is about to take its commit point (its snapshot): first mark done every
        execution whose terminal document and outputs the broker has acknowledged by now
        (the pipeline's quiet producers report failures only, so acknowledgements are
        learnt here, a batch at a time, not per record)."""
        settle = self.settle
        if settle is not None:
            settle()

    def read_point(self) -> None:
        """A source is about to read: serve the delivery reports that are due (on this
        thread, without waiting), then raise the error that must stop the job, if any."""
        serve = self.serve
        if serve is not None:
            serve()
        if self.error is not None:
            raise self.error
