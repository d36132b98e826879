"""``waxflow validate`` / ``waxflow run`` / ``waxflow schema`` on real flow files (no broker).

Each invalid flow must make ``validate`` exit 1 with ``file:LINE:`` pointing at the offending
field and a message naming the problem (never a traceback), and ``run`` must refuse it the same
way before it touches Kafka: the bootstrap is a closed port, so any attempt to connect would
show librdkafka's connect errors or hang instead of failing within seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.flow_helpers import WAXFLOW

HEADER = """\
id: orders
namespace: shop
triggers:
  - id: orders
    type: kafka.RealtimeTrigger
    topic: orders
    groupId: orders-g
    valueDeserializer: JSON
"""


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    marker: str  # a substring of exactly one line: the line the problem must be reported at
    message: str  # a substring the problem's message must contain
    alt_markers: tuple[str, ...] = ()  # other lines that are equally right
    also: tuple[str, ...] = ()  # more substrings the same problem line must contain


CASES = [
    Case("unknown-task-type", HEADER + """\
tasks:
  - id: first
    type: core.Log
    message: hi
  - id: second
    type: core.Nope
    message: hi
""", "type: core.Nope", "unknown type 'core.Nope'"),
    Case("unknown-task-type-nested", HEADER + """\
tasks:
  - id: route
    type: core.Switch
    value: "{{ trigger.value.type }}"
    cases:
      refund:
        - id: refund
          type: http.Requets
          uri: http://localhost/x
""", "type: http.Requets", "unknown type 'http.Requets'"),
    Case("missing-task-id", HEADER + """\
tasks:
  - id: first
    type: core.Log
    message: hi
  - type: core.Log
    message: no id here
""", "- type: core.Log", "missing required property 'id'"),
    Case("duplicate-task-id", HEADER + """\
tasks:
  - id: same
    type: core.Log
    message: one
  - id: other
    type: core.Log
    message: two
  - id: same   # the duplicate
    type: core.Log
    message: three
""", "id: same   # the duplicate", "duplicate task id 'same'"),
    Case("duplicate-task-id-in-switch-case", HEADER + """\
tasks:
  - id: notify
    type: core.Log
    message: first
  - id: route
    type: core.Switch
    value: "{{ trigger.value.type }}"
    cases:
      refund:
        - id: refund
          type: core.Log
          message: refund
      purchase:
        - id: notify   # clashes with the top-level task
          type: core.Log
          message: purchase
""", "id: notify   # clashes", "duplicate task id 'notify'"),
    Case("bad-retry-duration", HEADER + """\
tasks:
  - id: call
    type: http.Request
    uri: http://localhost/x
    retry:
      type: constant
      interval: 5 seconds
      maxAttempts: 3
""", "interval: 5 seconds", "ISO-8601 duration", also=("retry.interval", "5 seconds")),
    Case("template-syntax-error", HEADER + """\
tasks:
  - id: log
    type: core.Log
    message: "ok {{ trigger.offset }}"
  - id: broken
    type: core.Log
    message: "value {{ trigger.value.amount + }}"
""", "trigger.value.amount + }}", "syntax error"),
    Case("unknown-expression-variable", HEADER + """\
tasks:
  - id: log
    type: core.Log
    message: "got {{ trigers.value }}"
""", "trigers.value", "unknown variable 'trigers'"),
    Case("unknown-property", HEADER + """\
tasks:
  - id: call
    type: http.Request
    uri: http://localhost/x
    methd: POST
""", "methd: POST", "unknown property 'methd'"),
    Case("dlq-without-topic", """\
id: orders
namespace: shop
triggers:
  - id: orders
    type: kafka.RealtimeTrigger
    topic: orders
    groupId: orders-g
    onSerdeError: {type: DLQ}
tasks:
  - id: log
    type: core.Log
    message: hi
""", "onSerdeError: {type: DLQ}", "DLQ", also=("onSerdeError", "topic")),
    Case("share-with-topic-pattern", """\
id: orders
namespace: shop
triggers:
  - id: orders
    type: kafka.RealtimeTrigger
    groupId: orders-g
    groupType: SHARE
    topicPattern: "orders.*"
tasks:
  - id: log
    type: core.Log
    message: hi
""", "topicPattern:", "topicPattern", alt_markers=("groupType: SHARE",), also=("SHARE",)),
]


def line_of(text: str, marker: str) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if marker in line]
    assert len(hits) == 1, f"marker {marker!r} must be on exactly one line, found {hits}"
    return hits[0]


def waxflow(*args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WAXFLOW, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def closed_port_env() -> dict[str, str]:
    env = dict(os.environ)
    env["WAXFLOW_BOOTSTRAP"] = "127.0.0.1:1"
    env.pop("WAXFLOW_DEBUG", None)
    return env


def problem_line(stderr: str, message: str) -> str:
    lines = [ln for ln in stderr.splitlines() if message in ln]
    assert lines, f"no problem mentioning {message!r} in stderr:\n{stderr}"
    return lines[0]


def _validate(case: Case, tmp_path: Path) -> tuple[Path, str]:
    """Run ``waxflow validate`` on the case; return the flow path and the problem's line."""
    flow = tmp_path / "flow.yaml"
    flow.write_text(case.text)
    result = waxflow("validate", str(flow))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "valid flow" not in result.stdout
    found = problem_line(result.stderr, case.message)
    assert re.match(re.escape(str(flow)) + r":\d+:\d+: ", found), found
    for part in case.also:
        assert part in found, f"{part!r} missing from: {found}"
    return flow, found


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validate_points_at_the_offending_line(case: Case, tmp_path: Path) -> None:
    flow, found = _validate(case, tmp_path)
    lines = {line_of(case.text, m) for m in (case.marker, *case.alt_markers)}
    prefixes = tuple(f"{flow}:{n}:" for n in sorted(lines))
    assert found.startswith(prefixes), f"expected one of {prefixes}, got: {found}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_run_refuses_invalid_flow_before_touching_kafka(case: Case, tmp_path: Path) -> None:
    flow, from_validate = _validate(case, tmp_path)
    # the broker address is a closed port: any Kafka client started would log about it
    # (librdkafka lines naming 127.0.0.1:1), so their absence shows none was started
    result = waxflow("run", str(flow), "--stop-when-idle", "1", env=closed_port_env(),
                     timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "rdkafka" not in result.stderr and "127.0.0.1:1" not in result.stderr
    # the same problem, at the same place, as `waxflow validate` reports
    assert problem_line(result.stderr, case.message) == from_validate


def test_validate_accepts_a_valid_flow(tmp_path: Path) -> None:
    flow = tmp_path / "ok.yaml"
    flow.write_text(HEADER + """\
    onSerdeError: {type: DLQ, topic: orders.dlq}
tasks:
  - id: route
    type: core.Switch
    value: "{{ trigger.value.type }}"
    cases:
      refund:
        - id: refund
          type: http.Request
          uri: "http://localhost/refund?token={{ secret('API_TOKEN') }}"
          method: POST
          body: "{{ trigger.value | tojson }}"
          retry: {type: constant, interval: PT0.1S, maxAttempts: 5}
          timeout: PT5S
    defaults:
      - id: log
        type: core.Log
        message: "unrouted {{ trigger.offset }}"
  - id: alert
    type: core.If
    condition: "{{ trigger.value.amount > 10000 }}"
    then:
      - id: big
        type: notify.Webhook
        url: http://localhost/big
        payload: "{{ trigger.value | tojson }}"
errors:
  - id: page
    type: notify.Webhook
    url: http://localhost/errors
""")
    result = waxflow("validate", str(flow))
    assert result.returncode == 0, result.stderr
    assert "valid flow shop.orders" in result.stdout
    assert result.stderr.strip() == ""


def test_templates_are_allowed_under_data_keys_named_id_or_type(tmp_path: Path) -> None:
    flow = tmp_path / "data-keys.yaml"
    flow.write_text(HEADER + """\
tasks:
  - id: keep
    type: core.Set
    values:
      id: "{{ trigger.value.id }}"
  - id: call
    type: http.Request
    uri: http://localhost/orders
    method: POST
    body:
      id: "{{ trigger.value.id }}"
      type: "{{ trigger.value.type }}"
""")
    result = waxflow("validate", str(flow))
    assert result.returncode == 0, result.stderr


def test_templates_in_task_id_or_type_are_refused(tmp_path: Path) -> None:
    text = HEADER + """\
tasks:
  - id: "{{ trigger.value.id }}"
    type: core.Log
    message: hi
"""
    flow = tmp_path / "flow.yaml"
    flow.write_text(text)
    result = waxflow("validate", str(flow))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    found = problem_line(result.stderr, "templates are not allowed here")
    line = line_of(text, "trigger.value.id")
    assert found.startswith(f"{flow}:{line}:"), found


def test_validate_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = waxflow("validate", str(missing))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(missing) in result.stderr and "no such flow file" in result.stderr


def test_schema_prints_json_schema_with_tasks() -> None:
    result = waxflow("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert "tasks" in schema["properties"]
    assert "triggers" in schema["properties"]
    # no trigger: a manual flow (run by `waxflow test`), as in Kestra
    assert set(schema.get("required", [])) >= {"id", "namespace", "tasks"}
    text = json.dumps(schema)
    for task_type in ("core.Switch", "core.If", "http.Request", "notify.Webhook"):
        assert task_type in text
