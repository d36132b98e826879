"""Trigger options on the real broker: topicPattern, partitions, since, headerFilters."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.flow_helpers import (
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce,
    run_flow,
    write_flow,
)
from tests.kafka_helpers import committed

pytestmark = pytest.mark.integration

FLOW = """
id: options
namespace: tests
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    groupId: {group}
{selector}
tasks:
  - id: echo
    type: core.Set
    values: {{v: "{{{{ trigger.value }}}}"}}
"""


def _run(tmp_path: Path, bootstrap: str, selector: str) -> list[tuple[str, int, str]]:
    group, log_topic = f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    flow = write_flow(tmp_path, FLOW.format(group=group, selector=selector))
    res = run_flow(flow, flow_env(bootstrap, log_topic), idle=2)
    assert res.returncode == 0, res.stderr[-2000:]
    try:
        docs = latest_by_id(log_documents(bootstrap, log_topic)).values()
    except Exception:  # no execution at all: the log topic holds nothing
        return []
    return sorted((d["trigger"]["topic"], d["trigger"]["partition"],
                   d["taskRuns"][0]["outputs"]["v"]) for d in docs)


def test_topic_pattern_reads_every_matching_topic(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    a, b, other = new_topic(1), new_topic(1), new_topic(1)
    produce(bootstrap, a, [b"a1"])
    produce(bootstrap, b, [b"b1"])
    produce(bootstrap, other, [b"x"])
    pattern = f"({a}|{b})"
    got = _run(tmp_path, bootstrap, f'    topicPattern: "{pattern}"')
    assert got == sorted([(a, 0, "a1"), (b, 0, "b1")])


def test_partitions_restrict_the_assignment(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(3)
    produce(bootstrap, topic, [f"v{i}".encode() for i in range(9)], partitions=3)
    got = _run(tmp_path, bootstrap, f"    topic: {topic}\n    partitions: [1]")
    assert got == [(topic, 1, "v1"), (topic, 1, "v4"), (topic, 1, "v7")]


def test_since_starts_at_a_timestamp_when_the_group_has_no_offset(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(1)
    produce(bootstrap, topic, [b"old1", b"old2"])
    time.sleep(1.0)
    cut = datetime.now(UTC)
    time.sleep(0.5)
    produce(bootstrap, topic, [b"new1", b"new2"])
    got = _run(tmp_path, bootstrap, f"    topic: {topic}\n    since: \"{cut.isoformat()}\"")
    assert [v for _, _, v in got] == ["new1", "new2"]


def test_header_filters_skip_without_execution_but_advance(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(1)
    produce(bootstrap, topic, [b"keep1", b"keep2"], headers=[("tenant", b"acme")])
    produce(bootstrap, topic, [b"drop"], headers=[("tenant", b"other")])
    produce(bootstrap, topic, [b"nohdr"])
    group = f"g-{uuid.uuid4().hex[:8]}"
    log_topic = new_log_topic()
    flow = write_flow(tmp_path, FLOW.format(
        group=group, selector=f"    topic: {topic}\n    headerFilters: {{tenant: acme}}"))
    res = run_flow(flow, flow_env(bootstrap, log_topic), idle=2)
    assert res.returncode == 0, res.stderr[-2000:]
    docs = latest_by_id(log_documents(bootstrap, log_topic)).values()
    assert sorted(d["taskRuns"][0]["outputs"]["v"] for d in docs) == ["keep1", "keep2"]
    assert committed(bootstrap, group, topic, 1) == {0: 4}
