"""The execution document as the log stores it: strict JSON, always under the size cap.

Every document here is parsed with a strict parser (``NaN``/``Infinity`` tokens raise), and
every cap is checked on the encoded bytes: a document never exceeds ``max_bytes``, a value
over ``value_max`` becomes a ``{"$truncated": true, ...}`` marker, and the execution itself
keeps its full outputs. Also: a record the producer refuses names its topic and execution.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from waxflow.connectors.deliveries import Deliveries
from waxflow.connectors.execution_log import LogBatch
from waxflow.errors import DeliveryError
from waxflow.execution import (
    DOC_MAX_BYTES,
    PREVIEW_CHARS,
    VALUE_MAX_BYTES,
    Attempt,
    Execution,
    State,
    TaskRun,
    TriggerInfo,
    _env_bytes,
    encode_document,
    finite,
    now,
)


def strict(data: bytes) -> dict[str, Any]:
    """Parse as a strict JSON parser would (NaN, Infinity and -Infinity are not JSON)."""
    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")

    doc: dict[str, Any] = json.loads(data.decode("utf-8"), parse_constant=refuse)
    return doc


def execution(*outputs: dict[str, Any] | None, key: Any = "k1", state: State = State.SUCCESS,
              attempts: int = 1, error: str | None = None) -> Execution:
    e = Execution(id="e" * 32, namespace="tests", flow_id="doc",
                  trigger=TriggerInfo(type="kafka.RealtimeTrigger", topic="in", partition=2,
                                      offset=41, key=key, timestamp=1764086400000))
    for i, out in enumerate(outputs):
        run = TaskRun(f"t{i}", "core.Set", None, state)
        for _ in range(attempts):
            run.attempts.append(Attempt(state, now(), now(), error))
        run.outputs = out
        e.add_task_run(run)
    e.finish(state)
    return e


def old_encoding(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


# ------------------------------------------------------------------------------- fast path
def test_an_ordinary_document_is_encoded_as_before_and_not_marked() -> None:
    e = execution({"a": "order-1", "amount": 12.5, "nested": {"x": [1, 2, "é"]}})
    data = e.to_json()
    assert data == old_encoding(e.document())
    doc = strict(data)
    assert "truncated" not in doc
    assert doc["taskRuns"][0]["outputs"]["nested"] == {"x": [1, 2, "é"]}


def test_a_document_between_the_value_cap_and_the_document_cap_with_small_values_is_whole(
) -> None:
    # 40 values of 4 KB: the document is over the value cap, no value is: nothing is cut
    e = execution({f"v{i}": "x" * 4000 for i in range(40)})
    data = e.to_json()
    assert VALUE_MAX_BYTES < len(data) <= DOC_MAX_BYTES
    assert data == old_encoding(e.document())
    assert "truncated" not in strict(data)


# ------------------------------------------------------------------------------------ NaN
def test_nan_and_infinities_become_strings_everywhere() -> None:
    nan, inf = float("nan"), float("inf")
    e = execution({"n": nan, "p": inf, "m": -inf, "list": [1.5, nan, {"deep": -inf}],
                   "ok": 2.0}, key=nan)
    doc = strict(e.to_json())
    out = doc["taskRuns"][0]["outputs"]
    assert out == {"n": "NaN", "p": "Infinity", "m": "-Infinity",
                   "list": [1.5, "NaN", {"deep": "-Infinity"}], "ok": 2.0}
    assert doc["trigger"]["key"] == "NaN"
    # the execution keeps its values (only the document is rewritten)
    assert e.task_runs[0].outputs is not None
    assert math.isnan(e.task_runs[0].outputs["n"])


def test_finite_rewrites_keys_and_tuples_and_leaves_the_input_alone() -> None:
    data = {"a": (float("nan"), 1), float("inf"): True, "b": None}
    before = copy.deepcopy(data)
    assert finite(data) == {"a": ["NaN", 1], "Infinity": True, "b": None}
    assert repr(data) == repr(before)


def test_nan_in_a_document_that_is_also_too_large() -> None:
    e = execution({"n": float("nan"), "big": [float("nan")] * 200_000})
    data = e.to_json()
    doc = strict(data)
    out = doc["taskRuns"][0]["outputs"]
    assert out["n"] == "NaN"
    assert out["big"]["$truncated"] is True
    assert out["big"]["preview"].startswith('["NaN","NaN"')


# ---------------------------------------------------------------------------- value caps
@pytest.mark.parametrize("size", [1_500_000, 900_000, VALUE_MAX_BYTES + 1])
def test_an_output_value_over_the_value_cap_becomes_a_marker(size: int) -> None:
    body = "b" * size
    e = execution({"code": 200, "body": body, "headers": {"content-type": "text/plain"}})
    data = e.to_json()
    assert len(data) <= DOC_MAX_BYTES
    doc = strict(data)
    assert doc["truncated"] is True
    assert doc["state"] == "SUCCESS" and doc["terminal"] is True
    out = doc["taskRuns"][0]["outputs"]
    assert out["code"] == 200 and out["headers"] == {"content-type": "text/plain"}
    assert out["body"] == {"$truncated": True, "bytes": size + 2,  # its JSON: two quotes
                           "preview": "b" * PREVIEW_CHARS}
    # the execution itself still has the whole value
    assert e.task_runs[0].outputs is not None and e.task_runs[0].outputs["body"] is body


def test_a_value_at_the_cap_is_kept() -> None:
    value = "v" * (VALUE_MAX_BYTES - 2)  # its JSON has exactly VALUE_MAX_BYTES bytes
    doc = strict(execution({"v": value, "w": "small"}).to_json())
    assert doc["taskRuns"][0]["outputs"]["v"] == value
    assert "truncated" not in doc


def test_the_preview_of_a_structure_is_its_json_text_and_utf8_is_measured_in_bytes() -> None:
    rows = [{"name": "é" * 10, "i": i} for i in range(5000)]
    doc = strict(execution({"rows": rows}).to_json())
    marker = doc["taskRuns"][0]["outputs"]["rows"]
    assert marker["bytes"] == len(json.dumps(rows, separators=(",", ":"),
                                             ensure_ascii=False).encode())
    assert marker["preview"] == json.dumps(rows, separators=(",", ":"),
                                           ensure_ascii=False)[:PREVIEW_CHARS]


def test_the_trigger_key_error_text_and_upstream_id_are_capped() -> None:
    e = execution({"a": 1}, key={"$base64": "A" * 200_000}, state=State.FAILED,
                  error="boom " * 50_000)
    e.error = {"taskId": "t0", "message": "failed: " + "y" * 300_000}
    e.upstream_id = "u" * 100_000
    data = e.to_json()
    doc = strict(data)
    assert doc["truncated"] is True
    assert doc["trigger"]["key"]["$truncated"] is True
    assert doc["trigger"]["key"]["bytes"] == 200_000 + len('{"$base64":""}')
    message = doc["error"]["message"]
    assert isinstance(message, str) and message.startswith("failed: yyy")
    assert message.endswith(f"... [truncated: {300_008} bytes]")
    assert doc["error"]["taskId"] == "t0"
    assert doc["taskRuns"][0]["attempts"][0]["error"].endswith("bytes]")
    assert doc["upstreamExecutionId"].startswith("uuu") and len(doc["upstreamExecutionId"]) < 2000
    assert len(e.error["message"]) == 300_008  # the execution keeps its error


def test_a_long_skipped_list_keeps_its_head_and_last_entry() -> None:
    skipped = [{"topic": "in", "partition": 0, "offset": i, "error": "malformed JSON " * 10}
               for i in range(5000)]
    e = Execution(id="b" * 32, namespace="tests", flow_id="batch",
                  trigger=TriggerInfo(type="kafka.Trigger", offsets={"in/0": [0, 9999]},
                                      messages_count=5000, skipped_count=5000,
                                      skipped=skipped))
    e.finish(State.SUCCESS)
    data = e.to_json()
    doc = strict(data)
    got = doc["trigger"]["skipped"]
    assert doc["truncated"] is True and doc["trigger"]["skippedCount"] == 5000
    assert got[0] == skipped[0] and got[-1] == skipped[-1]
    marker = got[-2]
    assert marker["$truncated"] is True
    assert len(got) - 2 + 1 + marker["count"] == 5000  # head, marker, last
    assert len(json.dumps([*got[:-2], got[-1]], separators=(",", ":"))) <= VALUE_MAX_BYTES
    assert doc["trigger"]["offsets"] == {"in/0": [0, 9999]}
    assert len(e.trigger.skipped or []) == 5000


# ----------------------------------------------------------------------- the document cap
def test_many_medium_outputs_over_the_document_cap_fit() -> None:
    # 30 values of 40 KB: none is over the value cap, together they are over the document cap
    e = execution(*({"part": "p" * 40_000, "n": i} for i in range(30)))
    assert len(old_encoding(e.document())) > DOC_MAX_BYTES
    data = e.to_json()
    assert len(data) <= DOC_MAX_BYTES
    doc = strict(data)
    assert doc["truncated"] is True
    assert [r["taskId"] for r in doc["taskRuns"]] == [f"t{i}" for i in range(30)]
    assert all(r["outputs"]["n"] == i for i, r in enumerate(doc["taskRuns"]))
    assert all(r["outputs"]["part"]["$truncated"] for r in doc["taskRuns"])


def test_thousands_of_attempts_keep_the_first_ones_and_the_last() -> None:
    e = execution({"a": 1}, state=State.FAILED, attempts=20_000,
                  error="HTTP 503 from http://api/x: " + "busy " * 20)
    e.task_runs[0].attempts[-1].error = "the last one"
    data = e.to_json()
    doc = strict(data)
    assert len(data) <= DOC_MAX_BYTES and doc["truncated"] is True
    attempts = doc["taskRuns"][0]["attempts"]
    assert attempts[-1]["error"] == "the last one"
    assert attempts[-2]["$truncated"] is True
    assert len(attempts) - 1 + attempts[-2]["count"] == 20_000  # head + last kept


@pytest.mark.parametrize("max_bytes", [16_384, 50_000, 200_000, 900_000])
def test_any_document_fits_any_cap(max_bytes: int) -> None:
    e = execution(*({"big": "z" * 70_000, "mid": "m" * 20_000, "list": list(range(3000))}
                    for _ in range(40)),
                  key="k" * 500_000, attempts=50, error="e" * 5000)
    e.error = {"taskId": "t3", "message": "x" * 10_000}
    e.task_runs += [TaskRun(f"extra{i}", "core.Log", None, State.SUCCESS)
                    for i in range(3000)]
    for value_max in (1_024, 65_536, 10**9):
        data = encode_document(e.document(), max_bytes=max_bytes, value_max=value_max)
        assert len(data) <= max_bytes, (max_bytes, value_max)
        doc = strict(data)
        assert doc["truncated"] is True
        assert (doc["id"], doc["state"], doc["terminal"], doc["runId"]) == (
            e.id, "SUCCESS", True, e.run_id)
        assert (doc["trigger"]["topic"], doc["trigger"]["partition"],
                doc["trigger"]["offset"]) == ("in", 2, 41)
        assert doc["error"]["taskId"] == "t3"


def test_the_minimal_document_is_the_last_resort() -> None:
    # labels and batch offsets are not trimmed before the last resort
    e = execution({"a": 1})
    e.labels = {f"label{i}": "l" * 100 for i in range(300)}
    e.trigger.offsets = {f"topic{i}/0": [0, i] for i in range(300)}
    data = encode_document(e.document(), max_bytes=16_384, value_max=1_024)
    assert len(data) <= 16_384
    doc = strict(data)
    assert doc["truncated"] is True and doc["labels"]["$truncated"] is True
    assert doc["trigger"]["offsets"] == e.trigger.offsets  # kept up to half the cap
    assert doc["taskRuns"] == [{"$truncated": True, "count": 1,
                                "bytes": len(json.dumps(e.document()["taskRuns"],
                                                        separators=(",", ":")))}]
    assert (doc["id"], doc["state"], doc["trigger"]["offset"]) == (e.id, "SUCCESS", 41)


def test_a_long_task_run_list_keeps_its_head_and_last_run() -> None:
    e = execution(*({"a": i} for i in range(2000)))
    data = encode_document(e.document(), max_bytes=16_384, value_max=1_024)
    doc = strict(data)
    assert len(data) <= 16_384
    assert doc["truncated"] is True
    runs = doc["taskRuns"]
    assert runs[0]["taskId"] == "t0" and runs[-1]["taskId"] == "t1999"
    assert runs[-2]["$truncated"] is True


def test_trimming_never_changes_the_document_it_was_given() -> None:
    e = execution({"big": "q" * 2_000_000, "n": float("nan")}, key="k" * 100_000,
                  attempts=3, error="r" * 100_000)
    e.error = {"taskId": "t0", "message": "m" * 100_000}
    doc = e.document()
    before = repr(doc)
    encode_document(doc, max_bytes=16_384, value_max=1_024)
    assert repr(doc) == before
    assert e.error["message"] == "m" * 100_000


# ------------------------------------------------------------------------- the log lines
def with_logs(e: Execution, count: int, size: int, dropped: int = 0) -> Execution:
    """``count`` log lines of ``size``-character messages (``line i: ...``), the last one
    ``the last line``; ``dropped`` lines dropped by the bound before."""
    for i in range(count - 1):
        e.log("INFO", f"line {i}: " + "l" * size, task_id="t0",
              task_run_id=e.task_run_id(0), attempt=1)
    e.log("ERROR", "the last line", task_id="t0", task_run_id=e.task_run_id(0), attempt=2)
    e.logs_dropped = dropped
    return e


def test_log_lines_are_in_the_document_after_the_labels() -> None:
    e = with_logs(execution({"a": 1}), 3, 10, dropped=4)
    doc = strict(e.to_json())
    assert list(doc)[-2:] == ["logs", "logsDropped"]
    assert [x["message"][:6] for x in doc["logs"]] == ["line 0", "line 1", "the la"]
    assert doc["logsDropped"] == 4 and "truncated" not in doc


def test_log_lines_give_way_before_the_task_runs() -> None:
    # 10 outputs of 5 KB and 200 lines of 1 KB: only lines need to go to fit in 100 KB
    e = with_logs(execution(*({"part": "p" * 5_000} for _ in range(10))), 200, 1_000,
                  dropped=5)
    data = encode_document(e.document(), max_bytes=100_000, value_max=65_536)
    assert len(data) <= 100_000
    doc = strict(data)
    assert doc["truncated"] is True
    assert [r["outputs"]["part"] for r in doc["taskRuns"]] == ["p" * 5_000] * 10
    lines = doc["logs"]
    assert lines[-1]["message"] == "the last line" and lines[-1]["attempt"] == 2
    assert [x["message"].split(":")[0] for x in lines[:-1]] == [
        f"line {i}" for i in range(len(lines) - 1)]
    assert 40 < len(lines) < 50  # ~50 KB of lines fit beside the rest
    assert doc["logsDropped"] == 5 + 200 - len(lines)  # the bound's and the trim's
    assert all(not str(x).startswith("{'$truncated'") for x in lines)  # only lines


def test_when_the_task_runs_alone_are_too_large_every_line_goes() -> None:
    e = with_logs(execution(*({"a": i} for i in range(2000))), 50, 100)
    data = encode_document(e.document(), max_bytes=16_384, value_max=1_024)
    assert len(data) <= 16_384
    doc = strict(data)
    assert doc["logs"] == [] and doc["logsDropped"] == 50
    assert doc["taskRuns"][-2]["$truncated"] is True


def test_a_long_log_message_is_cut_like_an_error_text() -> None:
    e = with_logs(execution({"a": 1}), 2, 50_000)
    doc = strict(encode_document(e.document(), value_max=16_384))
    first = doc["logs"][0]["message"]
    assert first.startswith("line 0: ") and first.endswith("... [truncated: 50008 bytes]")
    assert doc["logs"][1]["message"] == "the last line"
    assert doc["truncated"] is True and "logsDropped" not in doc


def test_the_minimal_document_counts_the_lines_it_left_out() -> None:
    e = with_logs(execution({"a": 1}), 30, 10, dropped=2)
    e.labels = {f"label{i}": "l" * 100 for i in range(300)}
    e.trigger.offsets = {f"topic{i}/0": [0, i] for i in range(300)}
    doc = strict(encode_document(e.document(), max_bytes=16_384, value_max=1_024))
    assert "logs" not in doc and doc["logsDropped"] == 32
    assert doc["labels"]["$truncated"] is True  # it was the minimal document


@pytest.mark.parametrize("max_bytes", [16_384, 200_000])
def test_any_document_with_log_lines_fits(max_bytes: int) -> None:
    e = with_logs(execution(*({"big": "z" * 30_000} for _ in range(20)), attempts=20,
                            error="e" * 5000), 200, 5_000)
    for value_max in (1_024, 65_536, 10**9):
        doc = e.document()
        before = repr(doc)
        data = encode_document(doc, max_bytes=max_bytes, value_max=value_max)
        assert repr(doc) == before  # the given document is left alone
        assert len(data) <= max_bytes, (max_bytes, value_max)
        out = strict(data)
        kept = len(out.get("logs", []))
        assert kept + out["logsDropped"] == 200


def test_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_DOC_MAX_BYTES", "500_000")
    assert _env_bytes("WAXFLOW_DOC_MAX_BYTES", 900_000, 16_384) == 500_000
    monkeypatch.setenv("WAXFLOW_DOC_MAX_BYTES", "12")
    assert _env_bytes("WAXFLOW_DOC_MAX_BYTES", 900_000, 16_384) == 16_384
    monkeypatch.setenv("WAXFLOW_DOC_MAX_BYTES", "lots")
    assert _env_bytes("WAXFLOW_DOC_MAX_BYTES", 900_000, 16_384) == 900_000
    monkeypatch.delenv("WAXFLOW_DOC_MAX_BYTES")
    assert _env_bytes("WAXFLOW_DOC_MAX_BYTES", 900_000, 16_384) == 900_000
    assert DOC_MAX_BYTES < 1_000_000  # below the producer's message.max.bytes


# -------------------------------------------------------------------- failed deliveries
def offline_producer() -> Producer:
    """A producer that refuses records over 1,000 bytes at ``produce()`` (no broker)."""
    return Producer({"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": 1000,
                     "log_level": 0})


def test_a_refused_dlq_record_names_its_topic_record_and_execution() -> None:
    producer = offline_producer()
    deliveries = Deliveries(producer)
    headers: list[tuple[str, str | bytes | None]] = [
        ("waxflow.source.topic", b"orders"), ("waxflow.source.partition", b"1"),
        ("waxflow.source.offset", b"77"), ("waxflow.execution.id", b"c" * 32)]
    with pytest.raises(DeliveryError) as info:
        deliveries.produce("orders.dlq", b"k", b"v" * 5000, headers)
    text = str(info.value)
    assert "orders.dlq" in text and "orders/1@77" in text and "c" * 32 in text
    assert "5000 bytes" in text and "too large" in text.lower()
    assert deliveries.sent == 0
    deliveries.wait(1)  # nothing pending


def test_a_refused_execution_document_names_the_execution_and_its_record() -> None:
    batch = LogBatch(SimpleNamespace(producer=offline_producer(), topic="log"))  # type: ignore[arg-type]
    e = execution({"a": "x" * 3000})
    with pytest.raises(DeliveryError) as info:
        batch.write(e.id, e.to_json())
    text = str(info.value)
    assert f"execution document of {e.id}" in text
    assert "for record in/2@41" in text and "topic log" in text and "SUCCESS" in text


def test_a_failed_delivery_report_names_the_record() -> None:
    deliveries = Deliveries(offline_producer())
    deliveries._pending = 1
    msg = SimpleNamespace(topic=lambda: "orders.dlq", key=lambda: b"key-9",
                          value=lambda: b"v" * 10, headers=lambda: None)
    deliveries._on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), msg)  # type: ignore[arg-type]
    with pytest.raises(DeliveryError) as info:
        deliveries.wait(1)
    text = str(info.value)
    assert "record to topic orders.dlq (10 bytes) with key 'key-9'" in text


# ----------------------------------------------------------------- the direct encoding
_TEXTS = ["", "plain", 'quote " and \\ backslash', "new\nline\ttab\x01ctl", "é ü 中文 🚀",
          "\u2028 separators \u2029", "</script>"]


def _value(rng: Any, depth: int = 0) -> Any:
    """A random output value: JSON types, plus what ``jsonable`` converts (bytes, tuples,
    non-string keys, other objects) and NaN/infinities."""
    pick = rng.randrange(14 if depth < 3 else 9)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.randrange(-10**12, 10**12)
    if pick == 3:
        return rng.choice([0.1, -2.5e-8, 1e300, 12.0, 1 / 3])
    if pick in (4, 5):
        return rng.choice(_TEXTS)
    if pick == 6:
        return rng.choice([math.nan, math.inf, -math.inf]) if rng.random() < 0.2 else 1.5
    if pick == 7:
        return b"\x00\xffbytes"
    if pick == 8:
        return State.SUCCESS
    if pick == 9:
        return (1, "two")
    if pick == 10:
        return {rng.choice([1, 2.5, True, None, "k"]): _value(rng, depth + 1)}
    if pick == 11:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if pick == 12:
        return SimpleNamespace(a=1)  # jsonable: its str()
    return {rng.choice(_TEXTS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _random_execution(rng: Any) -> Execution:
    from datetime import UTC, datetime, timedelta, timezone

    def stamp() -> datetime:
        ts = datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC) + timedelta(
            microseconds=rng.randrange(-3_000_000, 3_000_000))
        if rng.random() < 0.1:
            ts = ts.replace(microsecond=0)
        if rng.random() < 0.1:
            ts = ts.astimezone(timezone(timedelta(hours=2)))
        return ts

    trigger = rng.choice([
        TriggerInfo(type="kafka.RealtimeTrigger", topic="in", partition=2, offset=41,
                    key=rng.choice(["k", None, 7, {"id": 1}, math.nan, _TEXTS[3]]),
                    timestamp=rng.choice([None, 1764086400000]),
                    delivery_count=rng.choice([None, 2]), ack=rng.choice([None, "ACCEPT"])),
        TriggerInfo(type="kafka.Trigger", offsets={"in/0": [1, 9]}, messages_count=9,
                    uri="kestra:///x", skipped_count=1,
                    skipped=[{"offset": 3, "error": _TEXTS[2]}]),
        TriggerInfo(type="schedule.Schedule", date="2026-11-29T00:00:00+00:00",
                    next="2026-11-30T00:00:00+00:00"),
    ])
    e = Execution(id="e" * 32, namespace=rng.choice(["tests", _TEXTS[4]]),
                  flow_id=rng.choice(["doc", _TEXTS[2]]), trigger=trigger, start=stamp(),
                  upstream_id=rng.choice([None, "u" * 32]),
                  labels=rng.choice([{}, {"team": _TEXTS[4]}]))
    for i in range(rng.randrange(4)):
        run = TaskRun(rng.choice([f"t{i}", _TEXTS[3]]), "core.Set",
                      rng.choice([None, "parent"]), rng.choice(list(State)))
        for _ in range(rng.randrange(3)):
            run.attempts.append(Attempt(rng.choice(list(State)), stamp(),
                                        rng.choice([None, stamp()]),
                                        rng.choice([None, _TEXTS[2], _TEXTS[4]])))
        run.outputs = rng.choice([None, {}, {"v": _value(rng)}, {"a": _value(rng),
                                                                 "b": _value(rng)}])
        e.add_task_run(run)
    if rng.random() < 0.3:
        e.error = {"taskId": "t0", "message": rng.choice(_TEXTS)}
    if rng.random() < 0.3:
        e.outputs = {"total": _value(rng)}
    if rng.random() < 0.3:
        e.log("WARN", rng.choice(_TEXTS), task_id="t0", task_run_id="x-0", attempt=1)
        e.logs_dropped = rng.choice([0, 3])
    if rng.random() < 0.1:  # over the value cap: trimmed by the general path
        e.outputs = {"big": "x" * (VALUE_MAX_BYTES + 10)}
    if rng.random() < 0.8:
        e.state = rng.choice(list(State))
        e.end = stamp()
    return e


def test_the_direct_encoding_writes_the_bytes_of_the_general_path() -> None:
    # to_json writes the JSON text straight from the execution (no document() dicts): for
    # any execution it must be exactly encode_document(document()) - keys, order, nulls,
    # escapes, dates, jsonable conversions, NaN strings and trimming included
    import random

    rng = random.Random(16)
    kinds = set()
    direct = 0
    for _ in range(3000):
        e = _random_execution(rng)
        data = e.to_json()
        assert data == encode_document(e.document()), e
        doc = strict(data)
        kinds.add(("truncated" in doc, "NaN" in data.decode() or "Infinity" in data.decode()))
        with contextlib.suppress(ValueError):
            direct += len(e._json_text().encode()) <= VALUE_MAX_BYTES
    # every case was met: plain, NaN made strings, trimmed, both; most took the direct path
    assert kinds == {(False, False), (False, True), (True, False), (True, True)}
    assert direct > 1500


def test_dates_are_isoformat_around_second_boundaries() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from waxflow.execution import iso

    base = datetime(2026, 12, 31, 23, 59, 59, 999_998, tzinfo=UTC)
    for step in range(6):  # crosses a second, a minute, a day, a month and a year
        ts = base + timedelta(microseconds=step)
        assert iso(ts) == ts.isoformat()
        assert iso(ts - timedelta(days=31)) == (ts - timedelta(days=31)).isoformat()
    other = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5)))
    assert iso(other) == other.isoformat() == "2026-01-01T12:00:00-05:00"
    assert iso(None) is None


def test_microsecond_times_are_the_datetimes_and_texts_of_the_same_instants() -> None:
    """The compiled path's clock (integer microseconds): the same instants, texts and
    durations as the general path's datetimes."""
    import random
    from datetime import UTC, datetime, timedelta

    from waxflow.execution import from_us, iso, iso_us, now, now_us

    base = datetime(2026, 12, 31, 23, 59, 59, 999_998, tzinfo=UTC)
    base_us = (base - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    for step in range(6):  # crosses a second, a minute, a day, a month and a year
        assert from_us(base_us + step) == base + timedelta(microseconds=step)
        assert iso_us(base_us + step) == (base + timedelta(microseconds=step)).isoformat()
    rnd = random.Random(3)
    for _ in range(2_000):
        us, dur = rnd.randrange(0, 4_102_444_800 * 10**6), rnd.randrange(0, 10**8)
        start, end = from_us(us), from_us(us + dur)
        assert iso_us(us) == iso(start) and iso_us(us + dur) == iso(end)
        assert dur / 1_000_000 * 1000 == (end - start).total_seconds() * 1000
    before, got, after = now(), from_us(now_us()), now()
    assert before <= got <= after


def test_run_ids_are_fresh_hex() -> None:
    ids = {Execution(id="e", namespace="n", flow_id="f", trigger=TriggerInfo(type="t")).run_id
           for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_forked_process_draws_other_run_ids() -> None:
    # run ids come from a seeded generator: a child forked from this process must not
    # repeat this process's next ids (the history tells runs of one execution apart by them)
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next run id, to the parent
        os.write(write, Execution(id="e", namespace="n", flow_id="f",
                                  trigger=TriggerInfo(type="t")).run_id.encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    mine = Execution(id="e", namespace="n", flow_id="f", trigger=TriggerInfo(type="t")).run_id
    assert len(child) == 32 and child != mine
