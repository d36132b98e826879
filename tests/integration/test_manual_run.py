"""Issue 13: a flow without a trigger (Kestra's manual flow) runs once on ``waxflow run``,
for real, with its inputs: its Produce reaches the broker (transactional, committed before
the execution ends), its history is in the execution log, and the exit code says how it
ended."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.flow_helpers import flow_env, log_documents, new_log_topic, run_flow, write_flow
from tests.kafka_helpers import read_all

pytestmark = pytest.mark.integration

FLOW = """\
id: manual_send
namespace: tests.manual
inputs:
  - {{id: who, type: STRING}}
  - {{id: n, type: INT, defaults: 2}}
tasks:
  - id: greet
    type: io.kestra.plugin.core.log.Log
    message: "sending {{{{ inputs.n }}}} for {{{{ inputs.who }}}}"
  - id: send
    type: io.kestra.plugin.kafka.Produce
    topic: {topic}
    from: {{key: "{{{{ inputs.who }}}}", value: "{{{{ inputs.n * 10 }}}}"}}
    properties: {{bootstrap.servers: "{bootstrap}"}}
  - id: check
    type: core.If
    condition: "{{{{ inputs.n > 5 }}}}"
    then:
      - {{id: too_many, type: core.Fail, errorMessage: "n {{{{ inputs.n }}}} is above 5"}}
"""


def test_a_manual_flow_runs_once_per_run_with_its_inputs(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    out, log = new_topic(), new_log_topic()
    flow = write_flow(tmp_path, FLOW.format(topic=out, bootstrap=bootstrap))
    env = flow_env(bootstrap, log, WAXFLOW_LOG_LEVEL="INFO")

    first = run_flow(flow, env, "--input", "who=ana", timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "ended SUCCESS" in first.stderr and "sending 2 for ana" in first.stderr
    second = run_flow(flow, env, "--input", "who=bo", "--input", "n=3", timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]

    sent = [(m.key(), m.value()) for m in read_all(bootstrap, out, isolation="read_committed")]
    assert sent == [(b"ana", b"20"), (b"bo", b"30")]
    docs = log_documents(bootstrap, log)
    ids = list(dict.fromkeys(d["id"] for d in docs))
    assert len(ids) == 2  # each run is a new execution
    for exec_id in ids:
        history = [d for d in docs if d["id"] == exec_id]
        assert [d["state"] for d in history] == ["RUNNING", "SUCCESS"]
        assert history[-1]["trigger"]["type"] == "manual"
        assert exec_id in (first.stderr + second.stderr)


def test_a_failed_manual_run_exits_1_saying_so(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    out, log = new_topic(), new_log_topic()
    flow = write_flow(tmp_path, FLOW.format(topic=out, bootstrap=bootstrap))

    result = run_flow(flow, flow_env(bootstrap, log), "--input", "who=cy", "--input", "n=9",
                      timeout=120)

    assert result.returncode == 1, result.stderr[-3000:]
    assert "ended FAILED" in result.stderr and "Traceback" not in result.stderr
    [terminal] = [d for d in log_documents(bootstrap, log) if d["terminal"]]
    assert terminal["state"] == "FAILED"
    assert "n 9 is above 5" in str(terminal["taskRuns"])


def test_a_manual_flow_refuses_cluster_options(tmp_path: Path, bootstrap: str) -> None:
    flow = write_flow(tmp_path, FLOW.format(topic="unused", bootstrap=bootstrap))
    result = run_flow(flow, flow_env(bootstrap, new_log_topic()), "--input", "who=x",
                      "--processes", "2", timeout=60)
    assert result.returncode != 0
    assert "manual flow" in result.stderr and "--processes" in result.stderr
    assert "Traceback" not in result.stderr
