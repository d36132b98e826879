"""Deliveries settled a snapshot at a time (no Python call per delivered record), on the real
broker: G1 holds when the broker refuses a terminal document *after* it was sent.

A realtime flow's terminal documents go to a producer that reports failures only
(:mod:`waxflow.operators.pipeline`, quiet mode); an offset is marked done only once a snapshot
found the producer's queue empty with no failure for its execution. Here the execution-log
topic takes at most 20,000-byte record batches: the client accepts a ~40 KB document of
incompressible text (under its own 1 MB limit, under the 64 KB value cap; the log producer
compresses) and the broker refuses it afterwards. The job
stops with one line naming the execution, its record and the topic, and the group's
committed offset never passes that record. (The refused document is the first record's: an
idempotent producer fails a whole record batch, so the small documents sent with it may
fail too; the first failure is the one reported.)
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.flow_helpers import flow_env, new_group, produce, realtime_flow, run_flow, write_flow
from tests.kafka_helpers import committed
from waxflow.execution import execution_id

pytestmark = pytest.mark.integration

NAMESPACE = "tests.quiet"


def test_a_document_the_broker_refuses_after_it_was_sent_stops_the_job_before_its_commit(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    topic, group = new_topic(1), new_group()
    log = new_topic(1, **{"max.message.bytes": "20000", "cleanup.policy": "compact"})
    big = base64.b64encode(os.urandom(30_000)).decode()  # lz4 cannot shrink it
    values: list[bytes | None] = [json.dumps({"n": i, "pad": big if i == 0 else "x"}).encode()
                                  for i in range(6)]
    produce(bootstrap, topic, values)
    path = write_flow(tmp_path, realtime_flow("quiet", NAMESPACE, """\
tasks:
  - id: copy
    type: core.Set
    values:
      pad: "{{ trigger.value.pad }}"
""", topic=topic, group=group))
    result = run_flow(path, flow_env(bootstrap, log), idle=2, timeout=120)

    assert result.returncode == 1, result.stderr[-2000:]
    line = [ln for ln in result.stderr.splitlines() if "delivery failed" in ln]
    assert line, result.stderr[-2000:]
    exec_id = execution_id(NAMESPACE, "quiet", topic, 0, 0)
    assert f"execution document of {exec_id}" in line[-1]
    assert f"for record {topic}/0@0" in line[-1] and f"topic {log}" in line[-1]
    assert "too large" in line[-1].lower()
    assert committed(bootstrap, group, topic, 1)[0] in (-1001, 0)
