"""G3 on the real broker: consume A → produce B exactly once across SIGKILLs.

The Produce task's records join the epoch's transaction, which commits the consumed offsets
below which every execution is done (``send_offsets_to_transaction``). A ``read_committed``
reader of B must see every input exactly once after 5 kills, with or without a recovery
directory; with ``transactional: false`` nothing is lost (duplicates are allowed and
counted).
"""

from __future__ import annotations

import os
import random
import signal
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.flow_helpers import (
    LogWatcher,
    flow_env,
    new_log_topic,
    produce,
    run_flow,
    start_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets, lso_hwm, read_all

pytestmark = pytest.mark.integration

N = 20_000
PARTS = 3

FLOW = """
id: a-to-b
namespace: tests
triggers:
  - id: a
    type: kafka.RealtimeTrigger
    topic: {src}
    groupId: {group}
    maxConcurrency: 32
tasks:
  - id: upper
    type: core.Set
    values: {{v: "{{{{ trigger.value | upper }}}}"}}
  - id: out
    type: kafka.Produce
    topic: {dst}
    transactional: {txn}
    from: {{key: "{{{{ trigger.key }}}}", value: "{{{{ outputs.upper.v }}}}"}}
"""


def _lso_equals_hwm(bootstrap: str, topic: str, parts: int) -> bool:
    lso, hwm = lso_hwm(bootstrap, topic, parts)
    return lso == hwm


def _kill_run(bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
              txn: bool, *args: str) -> tuple[Counter[bytes], Counter[bytes], str, str, str]:
    src, dst = new_topic(PARTS), new_topic(PARTS)
    group, log_topic = f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    keys = [f"k{i}".encode() for i in range(N)]
    produce(bootstrap, src, [f"v{i}".encode() for i in range(N)], keys=keys,
            partitions=PARTS)
    flow = write_flow(tmp_path, FLOW.format(src=src, dst=dst, group=group,
                                            txn=str(txn).lower()))
    env = flow_env(bootstrap, log_topic)
    watcher = LogWatcher(bootstrap, log_topic)
    rng = random.Random(7)
    thresholds = sorted(rng.sample(range(1500, 16000), 5))
    try:
        for threshold in thresholds:
            proc = start_flow(flow, env, "-w", "2", *args)
            try:
                watcher.wait_for(threshold, timeout=180, proc=proc)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            assert proc.returncode == -signal.SIGKILL
    finally:
        watcher.close()
    final = run_flow(flow, env, "-w", "2", *args, idle=3, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert committed(bootstrap, group, src, PARTS) == end_offsets(bootstrap, src, PARTS)
    seen = Counter(m.key() for m in read_all(bootstrap, dst, isolation="read_committed"))
    raw = Counter(m.key() for m in read_all(bootstrap, dst))
    assert set(seen) == set(keys), f"{len(set(keys) - set(seen))} inputs missing"
    return seen, raw, src, dst, group


@pytest.mark.parametrize("recovery", [False, True], ids=["group-offsets", "recovery-dir"])
def test_transactional_produce_is_exactly_once_across_kills(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, recovery: bool
) -> None:
    """With a recovery directory too: a kill between a transaction's commit and the epoch's
    snapshot leaves a snapshot older than the committed offsets, which must not replay the
    committed outputs."""
    args = ("--recovery-dir", str(tmp_path / "recovery")) if recovery else ()
    seen, raw, _src, dst, _group = _kill_run(bootstrap, new_topic, tmp_path, True, *args)
    dupes = sum(c - 1 for c in seen.values() if c > 1)
    assert dupes == 0, f"{dupes} duplicates visible to read_committed"
    aborted = sum(raw.values()) - sum(seen.values())
    print(f"records in aborted transactions (invisible to read_committed): {aborted}")
    assert _lso_equals_hwm(bootstrap, dst, PARTS), "a transaction was left hanging"
    values = {m.key(): m.value() for m in read_all(bootstrap, dst, isolation="read_committed")}
    assert values[b"k42"] == b"V42"


def test_non_transactional_produce_loses_nothing(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    seen, _raw, *_ = _kill_run(bootstrap, new_topic, tmp_path, False)
    dupes = sum(c - 1 for c in seen.values() if c > 1)
    print(f"at-least-once duplicates after 5 kills: {dupes}")
