"""The execution log read in a process of its own, for a sync with much to read.

``ExecutionIndex.sync`` starts ``python -m waxflow.recovery.index_reader`` when the log holds
many records to index: this process consumes them and hands them over as Arrow batches
(one IPC file per batch in a folder the index gives it, in memory where ``/dev/shm`` is),
so the process writing DuckDB never shares its GIL with a busy Kafka reader. It also decodes
the documents (DuckDB's JSON decoder, in memory, exactly as the index does for a batch it
reads itself): what it hands over are the decoded columns, a fifth of the values' bytes,
and the index only merges them.

Protocol (one JSON object per line both ways). On stdin, first the job: ``bootstrap``,
``topic``, ``client`` (librdkafka settings: sent on stdin, never on the command line, as
they may hold passwords), ``timeout`` (seconds), ``assign`` ([[partition, start], ...]),
``ends`` ({partition: end offset}), ``dir``, ``batch_docs``, ``batch_bytes``; then one line
per batch the index has written (an acknowledgement: at most two batches wait unwritten).
On stdout: ``{"file": path or null, "docs": n, "nexts": {partition: next offset}}`` per
batch, in log order; then ``{"end": true, "pending": [...], "texts": [...]}``, or
``{"error": {"code", "text", "fatal"}, "texts": [...]}`` when the client failed. The
positions of a batch are those after its last record, so the index stores them with the
batch's rows in one transaction, as when it reads in a thread. The process exits when its
stdin closes (the index stopped waiting for it). It runs without the cyclic garbage
collector (:func:`main`).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any

import duckdb
import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from waxflow.recovery.index import (
    _CONSUME,
    READ_FETCH,
    ExecutionIndex,
    _Batch,
    _ClientErrors,
    _decode_into,
    _left,
    _reader_config,
)


def _send(out: IO[str], item: dict[str, Any]) -> None:
    out.write(json.dumps(item) + "\n")
    out.flush()


def _write(db: duckdb.DuckDBPyConnection, folder: Path, batch: _Batch) -> str | None:
    """``batch`` decoded (:func:`_decode_into`) as an Arrow IPC file in ``folder``; None
    when it holds no record with a value."""
    if not batch.values:
        return None
    table = _decode_into(db, batch.table())
    path = folder / f"batch-{uuid.uuid4().hex}.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return str(path)


def run(job: dict[str, Any], acks: IO[str], out: IO[str]) -> None:
    """Read the job's partitions to their end offsets (or its timeout), sending batches."""
    deadline = time.monotonic() + float(job["timeout"])
    errors = _ClientErrors()
    ends = {int(p): int(o) for p, o in job["ends"].items()}
    folder = Path(job["dir"])
    consumer = Consumer({
        **_reader_config(job["bootstrap"], float(job["timeout"]), errors, job["client"]),
        **READ_FETCH,
    })
    unacked = 0
    db = duckdb.connect()
    db.execute("SET threads = 1")
    try:
        consumer.assign([TopicPartition(job["topic"], int(p), int(o))
                         for p, o in job["assign"]])
        pending = set(ends)
        batch, nexts = _Batch(), dict[int, int]()
        while pending and time.monotonic() < deadline:
            msgs = consumer.consume(_CONSUME, timeout=min(0.1, _left(deadline)))
            errors.raise_refused()
            ExecutionIndex._take_all(msgs, batch, ends=ends, pending=pending, nexts=nexts,
                                     errors=errors)
            if len(batch) >= job["batch_docs"] or batch.size >= job["batch_bytes"] or (
                    nexts and (not pending or not msgs)):
                while unacked >= 2:  # the index writes the one before the last first
                    if not acks.readline():
                        return
                    unacked -= 1
                _send(out, {"file": _write(db, folder, batch), "docs": len(batch),
                            "nexts": nexts})
                unacked += 1
                batch, nexts = _Batch(), {}
        if nexts:
            _send(out, {"file": _write(db, folder, batch), "docs": len(batch),
                        "nexts": nexts})
        _send(out, {"end": True, "pending": sorted(pending), "texts": errors.texts})
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        code = err.code() if isinstance(err, KafkaError) else KafkaError._FAIL
        text = err.str() if isinstance(err, KafkaError) else str(exc)
        fatal = bool(err.fatal()) if isinstance(err, KafkaError) else False
        _send(out, {"error": {"code": code, "text": text, "fatal": fatal},
                    "texts": errors.texts})
    finally:
        consumer.close()
        db.close()


def main() -> int:
    """Run the job read from stdin; an acknowledgement line per batch follows it there."""
    line = sys.stdin.readline()
    if not line:
        return 0
    # no cyclic garbage collection: this process makes no cycles worth collecting (records,
    # buffers and tables, freed by reference counting), and a collection pass every few
    # hundred consumed messages cost about a tenth of its CPU
    gc.disable()
    try:
        run(json.loads(line), sys.stdin, sys.stdout)
    except BrokenPipeError:  # the index stopped reading: nothing left to say
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
