"""Bad input never blocks the history, on the real broker (docs/execution-log.md).

An execution whose document would be over the broker's message size (an HTTP response of
1.5 MB, a ``core.Set`` of a 900 KB record whose JSON is 1.4 MB) gets a terminal document with
the large values replaced by ``$truncated`` markers, the job goes on and exits 0, and the
group's offsets reach the end; the tasks themselves saw the whole values. NaN and infinities
reach the history as strings any strict parser reads. A record whose delivery still fails (a
DLQ record over the DLQ topic's limit; a document with the caps lifted) stops the job with a
message naming the topic, the record and the execution, and nothing is committed past it.
"""

from __future__ import annotations

import base64
import json
import random
import struct
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.flow_helpers import WAXFLOW, flow_env, new_log_topic, produce, run_flow, write_flow
from tests.kafka_helpers import committed, end_offsets, read_all
from waxflow.execution import DOC_MAX_BYTES, PREVIEW_CHARS, execution_id

pytestmark = pytest.mark.integration

NAMESPACE = "tests.history"
BIG_HTTP = 1_500_000


def strict(data: bytes) -> dict[str, Any]:
    """Parse a document as a strict JSON parser would (no NaN/Infinity tokens)."""
    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")

    doc: dict[str, Any] = json.loads(data.decode("utf-8"), parse_constant=refuse)
    return doc


def history(bootstrap: str, log: str) -> dict[int, list[dict[str, Any]]]:
    """Every document of the log, strictly parsed and at most ``DOC_MAX_BYTES``, grouped by
    the trigger's offset (single-partition input topics)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for msg in read_all(bootstrap, log):
        value = msg.value() or b""
        assert len(value) <= DOC_MAX_BYTES
        doc = strict(value)
        assert msg.key() == doc["id"].encode()
        out.setdefault(doc["trigger"]["offset"], []).append(doc)
    return out


def terminal(docs: dict[int, list[dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """The terminal document of each record: exactly one run, exactly one terminal document."""
    out = {}
    for offset, seq in docs.items():
        assert len({d["runId"] for d in seq}) == 1, f"offset {offset} ran more than once"
        ends = [d for d in seq if d["terminal"]]
        assert len(ends) == 1 and seq[-1] is ends[0], seq
        out[offset] = ends[0]
    return out


def flow(tmp_path: Path, topic: str, group: str, tasks: str, *, name: str = "history",
         value: str = "STRING", extra: str = "") -> Path:
    return write_flow(tmp_path, f"""\
id: {name}
namespace: {NAMESPACE}
triggers:
  - id: in
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: {value}
{extra}tasks:
{tasks}""")


def executions_cli(bootstrap: str, log: str, tmp_path: Path, *args: str) -> Any:
    res = subprocess.run([WAXFLOW, "executions", *args, "--format", "json",
                          "--index", str(tmp_path / "index.sqlite")],
                         capture_output=True, text=True, timeout=60,
                         env=flow_env(bootstrap, log))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout, parse_constant=lambda token: pytest.fail(token))


def error_line(stderr: str) -> str:
    """The job's one-line error message."""
    lines = [line for line in stderr.splitlines() if line.startswith("waxflow: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def escaped_text(size: int) -> bytes:
    """``size`` bytes of text whose JSON is ~1.6x as long (quotes, backslashes, newlines)."""
    return (b'ab"\\\n' * (size // 5 + 1))[:size]


# --------------------------------------------------------------------------------- (a)
def test_a_large_http_response_is_truncated_in_the_history_and_the_job_goes_on(
        bootstrap: str, new_topic: Callable[..., str], httpserver: HTTPServer,
        tmp_path: Path) -> None:
    big = "".join(random.Random(7).choices("abcdefghijklmnopqrstuvwxyz0123456789",
                                           k=BIG_HTTP))

    def api(request: Request) -> Response:
        rid = request.args["id"]
        body = big if rid == "big" else f"small {rid}"
        return Response(body, status=200, content_type="text/plain")

    httpserver.expect_request("/api").respond_with_handler(api)
    topic, group, log = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    ids = ["s0", "s1", "big", "s2", "s3"]
    produce(bootstrap, topic, [i.encode() for i in ids])
    path = flow(tmp_path, topic, group, f"""\
  - id: call
    type: http.Request
    uri: "{httpserver.url_for('/api')}?id={{{{ trigger.value }}}}"
  - id: seen
    type: core.Set
    values:
      length: "{{{{ outputs.call.body | length }}}}"
      tail: "{{{{ outputs.call.body[-10:] }}}}"
""")

    result = run_flow(path, flow_env(bootstrap, log), idle=2, timeout=120)

    assert result.returncode == 0, result.stderr
    docs = terminal(history(bootstrap, log))
    assert sorted(docs) == [0, 1, 2, 3, 4]
    for offset, rid in enumerate(ids):
        doc = docs[offset]
        assert doc["state"] == "SUCCESS", doc["error"]
        call, seen = doc["taskRuns"]
        if rid != "big":
            assert "truncated" not in doc
            assert call["outputs"]["body"] == f"small {rid}"
            continue
        # the history holds a marker; the next task saw the whole body
        assert doc["truncated"] is True
        assert call["outputs"]["code"] == 200
        assert call["outputs"]["headers"]["content-type"].startswith("text/plain")
        assert call["outputs"]["body"] == {"$truncated": True, "bytes": BIG_HTTP + 2,
                                           "preview": big[:PREVIEW_CHARS]}
        assert seen["outputs"] == {"length": BIG_HTTP, "tail": big[-10:]}
    assert committed(bootstrap, group, topic, 1) == end_offsets(bootstrap, topic, 1) == {0: 5}

    big_id = execution_id(NAMESPACE, "history", topic, 0, 2)
    shown = executions_cli(bootstrap, log, tmp_path, "show", big_id)
    assert shown["state"] == "SUCCESS" and shown["truncated"] is True
    assert shown["taskRuns"][0]["outputs"]["body"]["$truncated"] is True


# --------------------------------------------------------------------------------- (b)
def test_a_set_of_a_900_kb_record_is_truncated_in_the_history_and_the_job_goes_on(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    topic, group, log = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    big = escaped_text(900_000)
    produce(bootstrap, topic, [b"small-0", big, b"small-2"],
            keys=[b"k0", b"k1", b"K" * 200_000])  # a key too large for the history as well
    path = flow(tmp_path, topic, group, """\
  - id: copy
    type: core.Set
    values:
      value: "{{ trigger.value }}"
      length: "{{ trigger.value | length }}"
""")

    result = run_flow(path, flow_env(bootstrap, log), idle=2, timeout=120)

    assert result.returncode == 0, result.stderr
    seqs = history(bootstrap, log)
    docs = terminal(seqs)
    assert sorted(docs) == [0, 1, 2]
    assert [docs[o]["state"] for o in (0, 1, 2)] == ["SUCCESS"] * 3
    assert docs[0]["taskRuns"][0]["outputs"] == {"value": "small-0", "length": 7}
    assert docs[2]["taskRuns"][0]["outputs"] == {"value": "small-2", "length": 7}
    assert "truncated" not in docs[0]
    doc = docs[1]
    text = big.decode()
    encoded = len(json.dumps(text, ensure_ascii=False).encode())
    assert encoded > 1_000_000  # more than the producer would take
    assert doc["truncated"] is True
    assert doc["taskRuns"][0]["outputs"] == {
        "value": {"$truncated": True, "bytes": encoded, "preview": text[:PREVIEW_CHARS]},
        "length": 900_000}
    assert doc["trigger"]["key"] == "k1"
    # a large key is capped in every document of its run, the RUNNING one included
    for d in seqs[2]:
        assert d["truncated"] is True
        assert d["trigger"]["key"] == {"$truncated": True, "bytes": 200_002,
                                       "preview": "K" * PREVIEW_CHARS}
    assert committed(bootstrap, group, topic, 1) == end_offsets(bootstrap, topic, 1) == {0: 3}


# --------------------------------------------------------------------------------- (c)
def test_nan_and_infinities_reach_the_history_as_strict_json(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    topic, group, log = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    nan_key = struct.pack(">d", float("nan"))
    produce(bootstrap, topic,
            [b'{"x": NaN, "y": Infinity, "s": "-inf", "list": [1, -Infinity]}',
             b'{"x": 1.5, "y": 2, "s": "3", "list": []}'],
            keys=[nan_key, struct.pack(">d", 0.5)])
    path = flow(tmp_path, topic, group, """\
  - id: set
    type: core.Set
    values:
      x: "{{ trigger.value.x }}"
      y: "{{ trigger.value.y }}"
      z: "{{ trigger.value.s | float }}"
      list: "{{ trigger.value.list }}"
      whole: "{{ trigger.value }}"
""", value="JSON", extra="    keyDeserializer: DOUBLE\n")

    result = run_flow(path, flow_env(bootstrap, log), idle=2, timeout=120)

    assert result.returncode == 0, result.stderr
    docs = terminal(history(bootstrap, log))  # every document parsed strictly
    assert docs[0]["state"] == "SUCCESS", docs[0]["error"]
    assert docs[0]["trigger"]["key"] == "NaN"
    assert docs[0]["taskRuns"][0]["outputs"] == {
        "x": "NaN", "y": "Infinity", "z": "-Infinity", "list": [1, "-Infinity"],
        "whole": {"x": "NaN", "y": "Infinity", "s": "-inf", "list": [1, "-Infinity"]}}
    assert "truncated" not in docs[0]
    assert docs[1]["trigger"]["key"] == 0.5
    assert docs[1]["taskRuns"][0]["outputs"]["x"] == 1.5
    assert committed(bootstrap, group, topic, 1) == end_offsets(bootstrap, topic, 1) == {0: 2}

    listed = executions_cli(bootstrap, log, tmp_path, "list", "--flow", "history")
    assert len(listed) == 2
    shown = executions_cli(bootstrap, log, tmp_path, "show", docs[0]["id"])
    assert shown["taskRuns"][0]["outputs"]["x"] == "NaN"


# ------------------------------------------------------------------- failed deliveries
def test_a_dlq_record_over_the_dlq_topics_limit_stops_the_job_naming_it(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    topic, group, log = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    dlq = new_topic(1, **{"max.message.bytes": "2048"})
    bad = base64.b64encode(random.Random(3).randbytes(30_000))  # not JSON, incompressible
    produce(bootstrap, topic, [b'{"ok": 1}', bad, b'{"ok": 3}'])
    path = flow(tmp_path, topic, group, """\
  - id: seen
    type: core.Set
    values:
      ok: "{{ trigger.value.ok }}"
""", value="JSON", extra=f"    onSerdeError: {{type: DLQ, topic: {dlq}}}\n")

    result = run_flow(path, flow_env(bootstrap, log), idle=2, timeout=120)

    assert result.returncode == 1
    message = error_line(result.stderr)
    exec_id = execution_id(NAMESPACE, "history", topic, 0, 1)
    assert f"record to topic {dlq}" in message, result.stderr
    assert f"for record {topic}/0@1" in message
    assert f"of execution {exec_id}" in message
    assert "too large" in message.lower()
    assert "Traceback" not in result.stderr
    # nothing is committed past the record whose DLQ copy failed
    assert committed(bootstrap, group, topic, 1)[0] in (-1001, 0, 1)
    assert read_all(bootstrap, dlq) == []


def test_with_the_caps_lifted_a_refused_document_stops_the_job_naming_its_record(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    """What every oversized document did before the caps: now at least it names itself."""
    topic, group, log = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce(bootstrap, topic, [b"small", escaped_text(900_000)])
    path = flow(tmp_path, topic, group, """\
  - id: copy
    type: core.Set
    values:
      value: "{{ trigger.value }}"
""")
    env = flow_env(bootstrap, log, WAXFLOW_DOC_MAX_BYTES=str(10**9),
                   WAXFLOW_DOC_VALUE_MAX_BYTES=str(10**9))

    result = run_flow(path, env, idle=2, timeout=120)

    assert result.returncode == 1
    message = error_line(result.stderr)
    exec_id = execution_id(NAMESPACE, "history", topic, 0, 1)
    assert f"execution document of {exec_id}" in message, result.stderr
    assert f"for record {topic}/0@1 in state SUCCESS" in message
    assert f"topic {log}" in message and "too large" in message.lower()
    assert committed(bootstrap, group, topic, 1)[0] in (-1001, 0, 1)
