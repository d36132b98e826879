"""Memory is bounded by settings, not by the backlog: a realtime job's peak RSS over a
backlog four times larger stays about the same (the full-size table is bench/memory.py)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.flow_helpers import WAXFLOW, flow_env, new_log_topic, produce, write_flow

pytestmark = pytest.mark.integration

FLOW = """
id: memory
namespace: tests
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
tasks:
  - id: set
    type: core.Set
    values: {{n: "{{{{ trigger.value.id }}}}"}}
"""

VALUE = b'{"id": 1, "pad": "' + b"x" * 1800 + b'"}'  # 2 KB records fill pre-fetch queues fast


def peak_rss_mb(cmd: list[str], env: dict[str, str], timeout: float = 300) -> float:
    """Run ``cmd`` to its end; its peak resident set size (VmHWM) in MB."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            break
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
        time.sleep(0.1)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    return peak


def test_peak_rss_does_not_grow_with_the_backlog(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    peaks = {}
    # both backlogs exceed the 5,000 executions a process keeps in flight: a smaller first
    # run would fill that bound only as far as its backlog, and CI measured the difference
    # (494 against 542 MB) as growth
    for n in (15_000, 60_000):
        topic, group = new_topic(4), f"g-{uuid.uuid4().hex[:8]}"
        produce(bootstrap, topic, [VALUE] * n, partitions=4)
        flow = write_flow(tmp_path, FLOW.format(topic=topic, group=group), f"flow-{n}.yaml")
        env = flow_env(bootstrap, new_log_topic())
        peaks[n] = peak_rss_mb([WAXFLOW, "run", str(flow), "--stop-when-idle", "2"], env)
    # 45,000 more records of 2 KB (90 MB) waiting: a pre-fetch bounded by the backlog
    # would hold them; bounded by settings, the peak moves by less than 40 MB
    print("peak RSS MB by backlog:", peaks)
    assert peaks[60_000] < peaks[15_000] + 40, peaks
