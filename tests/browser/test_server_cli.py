"""``waxflow server`` refuses what it cannot serve safely, with one line and no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.flow_helpers import WAXFLOW


def _server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if k != "WAXFLOW_SERVER_TOKEN"}
    return subprocess.run([WAXFLOW, "server", *args], capture_output=True, text=True,
                          timeout=60, env={**base, **(env or {})})


def test_another_host_without_a_token_is_refused_in_one_line() -> None:
    res = _server("--host", "0.0.0.0", "--port", "1")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "waxflow: error: --host 0.0.0.0 is not loopback: give a token with --token or "
        "$WAXFLOW_SERVER_TOKEN (every request will need it)"]


def test_a_bad_port_is_a_usage_error() -> None:
    res = _server("--port", "0")
    assert res.returncode == 2 and "--port: expected a TCP port" in res.stderr


def test_a_flow_file_that_is_not_a_flow_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nnamespace: y\ntasks: 3\n")
    res = _server("--flow", str(bad), "--no-sync", "--index", str(tmp_path / "i.sqlite"))
    assert res.returncode == 1
    assert str(bad) in res.stderr and "Traceback" not in res.stderr
