"""librdkafka's log goes through Python logging with repeats summarised."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from waxflow.connectors.kafka_config import RepeatSummary, client_conf


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("waxflow.kafka", logging.ERROR, __file__, 1, msg, None, None)


def test_repeats_are_held_back_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("waxflow.connectors.kafka_config.time.monotonic", lambda: now[0])
    summary = RepeatSummary(window=30)
    fail = "FAIL [rdkafka#consumer-{}] Connect to 127.0.0.1:9092 failed (after {}ms)"
    shown = [summary.filter(_record(fail.format(i, i * 7))) for i in range(50)]
    assert shown == [True] + [False] * 49  # alike but for the numbers
    assert summary.filter(_record("another message"))
    now[0] += 31
    late = _record(fail.format(99, 3))
    assert summary.filter(late)
    assert "(and 49 alike in the last 30s)" in late.getMessage()


def test_clients_log_through_python_logging() -> None:
    assert client_conf({})["logger"] is logging.getLogger("waxflow.kafka")
    assert client_conf({"logger": "mine"})["logger"] == "mine"  # a user's choice stands


def test_an_unreachable_broker_logs_a_few_lines_not_hundreds(tmp_path: Path) -> None:
    """A consumer polling a closed port for 6 s: librdkafka tries every ~1 s (more with two
    addresses); through the summary one line per kind of failure is printed."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import logging, time\n"
        "from confluent_kafka import Consumer\n"
        "from waxflow.connectors.kafka_config import client_conf\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "c = Consumer({**client_conf({'bootstrap.servers': '127.0.0.1:9'}), 'group.id': 'x',\n"
        "              'reconnect.backoff.max.ms': 200})\n"
        "end = time.monotonic() + 6\n"
        "while time.monotonic() < end:\n"
        "    c.poll(0.1)\n"
        "c.close()\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60)
    lines = [ln for ln in out.stderr.splitlines() if "Connection refused" in ln]
    assert lines, out.stderr[-2000:]  # the failures are reported ...
    assert all("waxflow.kafka" in ln for ln in lines)  # ... through Python logging
    assert len(lines) <= 4, lines  # ... and summarised
