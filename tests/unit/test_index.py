"""The execution index without a broker: documents go in through ``ExecutionIndex.ingest``."""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from waxflow.recovery.executions_cli import add_parser, parse_when
from waxflow.recovery.index import AmbiguousIdError, ExecutionIndex, IndexBusyError

LOG = "waxflow.executions"


def doc(exec_id: str, state: str = "SUCCESS", *, run: str = "r1", flow: str = "orders",
        namespace: str = "shop", start: str = "2026-11-25T16:00:00+00:00",
        topic: str | None = "orders", partition: int | None = 0, offset: int | None = 0,
        offsets: dict[str, list[int]] | None = None, upstream: str | None = None,
        **extra: Any) -> dict[str, Any]:
    terminal = state in ("SUCCESS", "WARNING", "FAILED", "SKIPPED")
    return {
        "id": exec_id, "namespace": namespace, "flowId": flow, "state": state,
        "terminal": terminal, "runId": run, "startDate": start,
        "endDate": start if terminal else None, "durationMs": 12.5 if terminal else None,
        "trigger": {"type": "kafka.RealtimeTrigger", "topic": topic, "partition": partition,
                    "offset": offset, "key": None, "timestamp": None, "offsets": offsets,
                    "messagesCount": None, "deliveryCount": None},
        "taskRuns": [], "error": None, "upstreamExecutionId": upstream, "labels": {},
        **extra,
    }


class Feeder:
    """Appends documents to log partition 0 at increasing offsets, like the real topic."""

    def __init__(self, index: ExecutionIndex) -> None:
        self.index = index
        self.offset = 0

    def __call__(self, *docs: dict[str, Any]) -> None:
        for d in docs:
            assert self.index.ingest(0, self.offset, d["id"].encode(), json.dumps(d).encode(),
                                     log_topic=LOG)
            self.offset += 1


@pytest.fixture
def index(tmp_path: Path) -> Iterator[ExecutionIndex]:
    with ExecutionIndex(tmp_path / "index.sqlite") as ix:
        yield ix


@pytest.fixture
def feed(index: ExecutionIndex) -> Feeder:
    return Feeder(index)


def test_latest_document_wins_by_log_offset(index: ExecutionIndex, feed: Feeder) -> None:
    feed(doc("a" * 32, "RUNNING"), doc("a" * 32, "SUCCESS"))
    assert index.list()[0]["state"] == "SUCCESS"
    # an older record of the same key (re-ingested out of order) does not win
    older = json.dumps(doc("a" * 32, "RUNNING")).encode()
    index.ingest(0, 0, b"a" * 32, older, log_topic=LOG)
    shown = index.show("a" * 32)
    assert shown is not None and shown["state"] == "SUCCESS" and shown["terminal"] is True
    assert len(index.list()) == 1


def test_tombstones_and_junk_are_ignored(index: ExecutionIndex) -> None:
    assert index.ingest(0, 0, b"k", None) is False
    assert index.ingest(0, 1, b"k", b"not json") is False
    assert index.ingest(0, 2, b"k", b"[1, 2]") is False
    assert index.ingest(0, 3, None, b'{"state": "RUNNING"}') is False
    assert index.list() == []
    # a document without "id" is keyed by the record key
    assert index.ingest(0, 4, b"fromkey", b'{"state": "RUNNING"}') is True
    assert [r["id"] for r in index.list()] == ["fromkey"]


def test_runs_count_distinct_run_ids(index: ExecutionIndex, feed: Feeder) -> None:
    eid = "b" * 32
    feed(doc(eid, "RUNNING", run="r1", start="2026-11-25T16:00:00+00:00"),
         doc(eid, "RUNNING", run="r2", start="2026-11-25T16:05:00+00:00"),
         doc(eid, "SUCCESS", run="r2", start="2026-11-25T16:05:00+00:00"))
    [row] = index.list()
    assert row["runs"] == 2 and row["state"] == "SUCCESS"
    shown = index.show(eid)
    assert shown is not None
    assert [(r["runId"], r["state"]) for r in shown["runs"]] == [("r1", "RUNNING"),
                                                                 ("r2", "SUCCESS")]
    assert shown["runs"][1]["startDate"].startswith("2026-11-25T16:05:00")


def test_list_filters_and_order(index: ExecutionIndex, feed: Feeder) -> None:
    feed(doc("e1" * 16, "SUCCESS", flow="orders", start="2026-11-25T10:00:00+00:00", offset=1),
         doc("e2" * 16, "FAILED", flow="orders", start="2026-11-25T11:00:00+00:00", offset=2),
         doc("e3" * 16, "SUCCESS", flow="refunds", namespace="pay", topic="refunds",
             start="2026-11-25T12:00:00+01:00", offset=3),  # 11:00Z, written in +01:00
         doc("e4" * 16, "RUNNING", flow="batchy", topic=None, partition=None, offset=None,
             offsets={"clicks/0": [0, 9], "orders/1": [5, 7]},
             start="2026-11-25T13:00:00Z"))
    def ids(rows: list[dict[str, Any]]) -> list[str]:
        return [r["id"][:2] for r in rows]

    assert ids(index.list()) == ["e4", "e3", "e2", "e1"]
    assert ids(index.list(flow="orders")) == ["e2", "e1"]
    assert ids(index.list(flow="pay.refunds")) == ["e3"]
    assert ids(index.list(state="success")) == ["e3", "e1"]
    assert ids(index.list(topic="orders")) == ["e4", "e2", "e1"]
    assert ids(index.list(topic="clicks")) == ["e4"]
    since = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
    assert set(ids(index.list(since=since))) == {"e4", "e3", "e2"}
    assert ids(index.list(since=since, until=datetime(2026, 11, 25, 12, 0))) in (
        ["e3", "e2"], ["e2", "e3"])
    assert ids(index.list(limit=1)) == ["e4"]
    assert ids(index.list(flow="orders", state="FAILED")) == ["e2"]


def test_show_by_prefix_and_ambiguity(index: ExecutionIndex, feed: Feeder) -> None:
    feed(doc("abcdef01" + "0" * 24), doc("abcdef02" + "0" * 24), doc("123456" + "f" * 26))
    shown = index.show("123456f")
    assert shown is not None and shown["id"] == "123456" + "f" * 26
    assert index.show("12345") is None  # too short for a prefix
    assert index.show("999999") is None
    with pytest.raises(AmbiguousIdError) as err:
        index.show("abcdef")
    assert err.value.candidates == ["abcdef01" + "0" * 24, "abcdef02" + "0" * 24]
    assert index.show("abcdef02") is not None


def test_trace_record_batch_and_downstream(index: ExecutionIndex, feed: Feeder) -> None:
    feed(doc("rec" + "0" * 29, topic="orders", partition=1, offset=7),
         doc("other" + "0" * 27, topic="orders", partition=1, offset=8),
         doc("batch" + "0" * 27, topic=None, partition=None, offset=None,
             offsets={"orders/1": [5, 9], "orders/0": [0, 3]}),
         doc("down1" + "0" * 27, topic="enriched", offset=0, upstream="rec" + "0" * 29),
         doc("down2" + "0" * 27, topic="alerts", offset=4, upstream="down1" + "0" * 27),
         doc("fromb" + "0" * 27, topic="agg", offset=0, upstream="batch" + "0" * 27))
    got = [(r["id"][:5], r["match"], r["depth"]) for r in index.trace("orders", 1, 7)]
    assert sorted(got[:2]) == [("batch", "batch", 0), ("rec00", "record", 0)]
    assert sorted(got[2:4]) == [("down1", "downstream", 1), ("fromb", "downstream", 1)]
    assert got[4:] == [("down2", "downstream", 2)]
    # range bounds are inclusive; outside them only record matches remain
    assert [r["id"][:5] for r in index.trace("orders", 1, 9)] == ["batch", "fromb"]
    assert [r["id"][:5] for r in index.trace("orders", 1, 10)] == []
    assert [r["id"][:5] for r in index.trace("orders", 0, 3)] == ["batch", "fromb"]
    assert index.trace("orders", 2, 7) == []


def test_trace_stops_at_cycles_and_depth(index: ExecutionIndex, feed: Feeder) -> None:
    chain = [f"c{i:02d}" + "0" * 29 for i in range(14)]
    feed(doc(chain[0], topic="in", offset=0, upstream=chain[1]))  # a cycle back to the root
    for i in range(1, 14):
        feed(doc(chain[i], topic=f"t{i}", offset=0, upstream=chain[i - 1]))
    got = index.trace("in", 0, 0)
    assert [r["depth"] for r in got] == list(range(11))
    assert len({r["id"] for r in got}) == 11


def test_index_persists_and_rebuilds_on_schema_change(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ix.duckdb"
    with ExecutionIndex(path) as ix:
        Feeder(ix)(doc("p" * 32))
    with ExecutionIndex(path) as ix:
        assert len(ix.list()) == 1
    assert capsys.readouterr().err == ""
    db = duckdb.connect(str(path))
    db.execute("UPDATE meta SET value = '999' WHERE name = 'schema'")
    db.close()
    with ExecutionIndex(path) as ix:
        assert ix.list() == []  # a cache from another version is dropped, not misread
        Feeder(ix)(doc("q" * 32))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rebuilding it from the log" in err
    with ExecutionIndex(path) as ix:  # rebuilt once: no note the next time
        assert [r["id"] for r in ix.list()] == ["q" * 32]
    assert capsys.readouterr().err == ""


def test_an_old_sqlite_index_is_replaced(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "given.idx"
    with sqlite3.connect(path) as db:  # what the previous version wrote
        db.execute("CREATE TABLE executions (id TEXT PRIMARY KEY, doc TEXT)")
    with ExecutionIndex(path) as ix:
        assert ix.list() == []
        Feeder(ix)(doc("r" * 32))
        assert len(ix.list()) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "older waxflow" in err and str(path) in err


def test_default_path_honours_waxflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with sqlite3.connect(home / "index.sqlite") as db:  # the previous version's index
        db.execute("CREATE TABLE executions (id TEXT PRIMARY KEY)")
    monkeypatch.setenv("WAXFLOW_HOME", str(home))
    with ExecutionIndex() as ix:
        assert ix.path == home / "index.duckdb"
    assert ix.path.exists() and not (home / "index.sqlite").exists()
    assert "removing the old" in capsys.readouterr().err


def test_count_histogram_and_text(index: ExecutionIndex, feed: Feeder) -> None:
    feed(doc("e1" * 16, "SUCCESS", start="2026-11-25T10:00:10+00:00", offset=1,
             trigger_key="cust-001"),
         doc("e2" * 16, "FAILED", start="2026-11-25T10:00:50+00:00", offset=2),
         doc("e3" * 16, "SUCCESS", flow="refunds", start="2026-11-25T10:01:05+00:00",
             offset=3),
         doc("e4" * 16, "RUNNING", start="2026-11-25T10:03:00+00:00", offset=4))
    # record keys: "k1" for e1 only (set below), None otherwise
    assert index.count() == {"SUCCESS": 2, "FAILED": 1, "RUNNING": 1}
    assert index.count(flow="orders") == {"SUCCESS": 1, "FAILED": 1, "RUNNING": 1}
    assert index.count(state="failed") == {"FAILED": 1}
    assert index.count(since="2026-11-25T10:01:00Z") == {"SUCCESS": 1, "RUNNING": 1}
    assert index.count(until=datetime(2026, 11, 25, 10, 1)) == {"SUCCESS": 1, "FAILED": 1}
    assert index.histogram() == [
        {"bucket": "2026-11-25T10:00:00+00:00", "state": "FAILED", "count": 1},
        {"bucket": "2026-11-25T10:00:00+00:00", "state": "SUCCESS", "count": 1},
        {"bucket": "2026-11-25T10:01:00+00:00", "state": "SUCCESS", "count": 1},
        {"bucket": "2026-11-25T10:03:00+00:00", "state": "RUNNING", "count": 1}]
    assert index.histogram(bucket_seconds=3600, flow="orders") == [
        {"bucket": "2026-11-25T10:00:00+00:00", "state": "FAILED", "count": 1},
        {"bucket": "2026-11-25T10:00:00+00:00", "state": "RUNNING", "count": 1},
        {"bucket": "2026-11-25T10:00:00+00:00", "state": "SUCCESS", "count": 1}]
    # text: an execution-id prefix, or a substring of the record key
    assert [r["id"] for r in index.list(text="e3e3")] == ["e3" * 16]
    keyed = doc("k" * 32, start="2026-11-25T09:00:00+00:00", offset=5)
    keyed["trigger"]["key"] = "customer-4711"
    feed(keyed)
    assert [r["id"] for r in index.list(text="er-47")] == ["k" * 32]
    assert index.list(text="er-47")[0]["trigger"]["key"] == "customer-4711"
    assert index.count(text="er-47") == {"SUCCESS": 1}
    assert index.list(text="nothing-like-it") == []
    # pagination: newest first, limit/offset
    ids = [r["id"][:2] for r in index.list()]
    assert ids == ["e4", "e3", "e2", "e1", "kk"]
    assert [r["id"][:2] for r in index.list(limit=2, offset=2)] == ["e2", "e1"]
    assert index.list(offset=10) == []
    with pytest.raises(ValueError, match="not an ISO datetime"):
        index.list(since="yesterday")


def test_flows_summarise_each_flow(index: ExecutionIndex, feed: Feeder) -> None:
    feed(doc("a1" * 16, "SUCCESS", start="2026-11-25T10:00:00+00:00", offset=1),
         doc("a2" * 16, "FAILED", start="2026-11-25T10:20:00+00:00", offset=2),
         doc("a3" * 16, "SUCCESS", start="2026-11-25T10:25:00+00:00", offset=3,
             topic="orders-eu"),
         doc("b1" * 16, "SUCCESS", flow="refunds", namespace="pay", topic=None,
             partition=None, offset=None, offsets={"refunds/0": [0, 9]},
             start="2026-11-25T11:00:00+00:00"))
    grouped = doc("c1" * 16, "RUNNING", flow="grouped", start="2026-11-25T12:00:00+00:00")
    grouped["trigger"]["group"] = "waxflow-shop-grouped"
    feed(grouped)
    got = {(f["namespace"], f["flow"]): f for f in index.flows()}
    assert [(f["namespace"], f["flow"]) for f in index.flows()] == [
        ("pay", "refunds"), ("shop", "grouped"), ("shop", "orders")]
    orders = got[("shop", "orders")]
    assert orders["last_id"] == "a3" * 16 and orders["last_state"] == "SUCCESS"
    assert orders["last_time"] == "2026-11-25T10:25:00+00:00"
    assert orders["counts"] == {"FAILED": 1, "SUCCESS": 2}
    assert orders["topics"] == ["orders", "orders-eu"]
    assert orders["group"] is None
    assert orders["per_minute"] == 0.2  # 2 executions in the 10 minutes up to 10:25
    assert got[("pay", "refunds")]["topics"] == ["refunds"]
    assert got[("shop", "grouped")]["group"] == "waxflow-shop-grouped"


def recount(index: ExecutionIndex) -> dict[tuple[Any, ...], int]:
    """The per-flow state counts recounted from the rows themselves."""
    rows = index._db.execute(
        "SELECT namespace, flow_id, coalesce(state, '?'), count(*) FROM executions"
        " GROUP BY ALL").fetchall()
    return {(r[0], r[1], r[2]): int(r[3]) for r in rows}


def kept_counts(index: ExecutionIndex) -> dict[tuple[Any, ...], int]:
    return {(f["namespace"], f["flow"], state): n for f in index.flows()
            for state, n in f["counts"].items()}


def test_flow_counts_follow_every_merge(index: ExecutionIndex) -> None:
    """flows() answers from counts kept at each merge: they equal a recount of the rows
    after new executions, later documents, replays (new runs), documents of several runs in
    one batch, old records arriving again and a flow change of an execution."""
    def rec(off: int, eid: str, state: str, run: str = "r1", **kw: Any
            ) -> tuple[int, int, bytes, bytes, None]:
        return (0, off, eid.encode(), json.dumps(doc(eid, state, run=run, **kw)).encode(),
                None)

    a, b, c = "a" * 32, "b" * 32, "c" * 32
    index.ingest_batch(LOG, [rec(0, a, "RUNNING"), rec(1, b, "RUNNING", flow="refunds")])
    assert kept_counts(index) == recount(index) == {
        ("shop", "orders", "RUNNING"): 1, ("shop", "refunds", "RUNNING"): 1}
    index.ingest_batch(LOG, [rec(2, a, "SUCCESS"), rec(3, c, "RUNNING"),
                             rec(4, c, "FAILED")])
    assert kept_counts(index) == recount(index) == {
        ("shop", "orders", "SUCCESS"): 1, ("shop", "orders", "FAILED"): 1,
        ("shop", "refunds", "RUNNING"): 1}
    # a replay of c (a new run), b in two runs within one batch, an old record of a again
    index.ingest_batch(LOG, [rec(5, c, "RUNNING", run="r2"), rec(6, b, "FAILED"),
                             rec(7, b, "SUCCESS", run="r2", flow="refunds"),
                             rec(1, a, "RUNNING")])
    assert kept_counts(index) == recount(index) == {
        ("shop", "orders", "SUCCESS"): 1, ("shop", "orders", "RUNNING"): 1,
        ("shop", "refunds", "SUCCESS"): 1}
    # an execution whose later document names another flow moves between flows
    index.ingest_batch(LOG, [rec(8, a, "SUCCESS", flow="moved")])
    assert kept_counts(index) == recount(index)
    assert {f["flow"] for f in index.flows()} == {"orders", "refunds", "moved"}
    assert [f["last_id"] for f in index.flows() if f["flow"] == "orders"] == [c]


def test_downstream_follows_produced_records(index: ExecutionIndex, feed: Feeder) -> None:
    feed(doc("root" + "0" * 28, topic="orders", offset=1),
         doc("kid1" + "0" * 28, topic="enriched", offset=0, upstream="root" + "0" * 28,
             start="2026-11-25T16:00:01+00:00"),
         doc("kid2" + "0" * 28, topic="enriched", offset=1, upstream="root" + "0" * 28,
             start="2026-11-25T16:00:02+00:00"),
         doc("gkid" + "0" * 28, topic="alerts", offset=0, upstream="kid2" + "0" * 28),
         doc("back" + "0" * 28, topic="loop", offset=0, upstream="gkid" + "0" * 28))
    feed(doc("root" + "0" * 28, topic="orders", offset=1, upstream="back" + "0" * 28))
    got = [(r["id"][:4], r["depth"], r["match"]) for r in index.downstream("root00")]
    assert got == [("kid1", 1, "downstream"), ("kid2", 1, "downstream"),
                   ("gkid", 2, "downstream"), ("back", 3, "downstream")]  # the cycle is cut
    assert index.downstream("kid1" + "0" * 28) == []
    assert index.downstream("unknown-id") == []


def test_show_without_a_broker_gives_the_summary(index: ExecutionIndex, feed: Feeder) -> None:
    feed(doc("s" * 32, "FAILED", error={"taskId": "load", "message": "boom"}))
    shown = index.show("s" * 32)
    assert shown is not None
    assert shown["state"] == "FAILED" and shown["error"] == {"taskId": "load",
                                                             "message": "boom"}
    assert shown["taskRuns"] == [] and shown["logs"] == []
    assert "no broker known" in shown["documentError"] and "\n" not in shown["documentError"]
    assert [r["state"] for r in shown["runs"]] == ["FAILED"]


def test_bulk_batch_with_junk_keeps_the_documents(index: ExecutionIndex) -> None:
    records: list[tuple[int, int, bytes | None, bytes | None, int | None]] = [
        (0, 0, b"a" * 32, json.dumps(doc("a" * 32, "RUNNING")).encode(), None),
        (0, 1, b"x", b"not json", None),
        (0, 2, b"y", b"[1, 2]", None),
        (0, 3, b"z", None, None),
        (0, 4, b"a" * 32, json.dumps(doc("a" * 32, "SUCCESS")).encode(), None),
        (0, 5, b"w", json.dumps({"id": "w" * 32, "state": "RUNNING",
                                 "trigger": {"partition": "zero"}}).encode(), None),
        (0, 6, b"fromkey", b'{"state": "RUNNING"}', None),
    ]
    assert index.ingest_batch(LOG, records) == 4
    rows = {r["id"]: r for r in index.list()}
    assert set(rows) == {"a" * 32, "w" * 32, "fromkey"}
    assert rows["a" * 32]["state"] == "SUCCESS" and rows["a" * 32]["logOffset"] == 4
    assert rows["w" * 32]["trigger"]["partition"] is None  # a mistyped field is dropped
    assert index.ingest_batch(LOG, []) == 0


def test_several_documents_of_a_key_in_one_batch(index: ExecutionIndex) -> None:
    """Within one batch the latest document of an execution wins, runs are counted, a junk
    latest document never wins and a mistyped field sends the batch one by one."""
    def rec(off: int, key: str, value: bytes | dict[str, Any]) -> tuple[int, int, bytes,
                                                                        bytes, None]:
        raw = value if isinstance(value, bytes) else json.dumps(
            value, separators=(",", ":")).encode()
        return (0, off, key.encode(), raw, None)

    a, b, c = "a" * 32, "b" * 32, "c" * 32
    batch = [rec(0, a, doc(a, "RUNNING")), rec(1, b, doc(b, "RUNNING", run="r1")),
             rec(2, c, doc(c, "RUNNING")), rec(3, a, doc(a, "SUCCESS")),
             rec(4, b, doc(b, "SUCCESS", run="r2")), rec(5, c, b"{not json")]
    assert index.ingest_batch(LOG, batch) == 5  # all but the junk one
    rows = {r["id"]: r for r in index.list()}
    assert rows[a]["state"] == "SUCCESS" and rows[a]["runs"] == 1
    assert rows[a]["logOffset"] == 3
    assert rows[b]["state"] == "SUCCESS" and rows[b]["runs"] == 2  # both runs counted
    assert rows[c]["state"] == "RUNNING" and rows[c]["logOffset"] == 2  # junk never wins
    # a mistyped field in the latest document: the batch is decoded one by one, whole
    d = "d" * 32
    bad = doc(d, "FAILED")
    bad["trigger"]["partition"] = "zero"
    assert index.ingest_batch(LOG, [rec(6, d, doc(d, "RUNNING")), rec(7, d, bad)]) == 2
    [row] = [r for r in index.list() if r["id"] == d]
    assert row["state"] == "FAILED" and row["trigger"]["partition"] is None


def test_runs_across_batches(index: ExecutionIndex) -> None:
    """A replay's documents arriving in a later batch than the first run's."""
    eid = "d" * 32

    def rec(off: int, state: str, run: str, start: str) -> tuple[int, int, bytes, bytes, None]:
        return (0, off, eid.encode(), json.dumps(doc(eid, state, run=run, start=start)).encode(),
                None)

    t1, t2, t3 = ("2026-11-25T16:00:00+00:00", "2026-11-25T16:05:00+00:00",
                  "2026-11-25T16:09:00+00:00")
    index.ingest_batch(LOG, [rec(0, "RUNNING", "r1", t1)])
    index.ingest_batch(LOG, [rec(1, "FAILED", "r1", t1), rec(2, "RUNNING", "r2", t2)])
    index.ingest_batch(LOG, [rec(3, "SUCCESS", "r2", t2), rec(4, "RUNNING", "r3", t3)])
    index.ingest_batch(LOG, [rec(1, "FAILED", "r1", t1)])  # an old record again: no change
    [row] = index.list()
    assert row["runs"] == 3 and row["state"] == "RUNNING" and row["runId"] == "r3"
    shown = index.show(eid)
    assert shown is not None
    assert [(r["runId"], r["state"]) for r in shown["runs"]] == [
        ("r1", "FAILED"), ("r2", "SUCCESS"), ("r3", "RUNNING")]
    assert shown["runs"][1]["startDate"] == t2


# -- CLI ---------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="waxflow")
    add_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


@pytest.fixture
def cli_index(tmp_path: Path) -> str:
    path = tmp_path / "cli.sqlite"
    with ExecutionIndex(path) as ix:
        feed = Feeder(ix)
        feed(doc("f00d" * 8, "RUNNING", run="r1", offset=1),
             doc("f00d" * 8, "FAILED", run="r2", offset=1,
                 error={"taskId": "load", "message": "boom [x]"},
                 taskRuns=[{"taskId": "load", "type": "http.Request", "parentTaskId": None,
                            "state": "FAILED", "outputs": {},
                            "attempts": [{"state": "FAILED", "error": "timeout",
                                          "startDate": "2026-11-25T16:00:00+00:00",
                                          "endDate": "2026-11-25T16:00:01.5+00:00"}] * 2}]),
             doc("beef" * 8, "SUCCESS", offset=2, start="2026-11-25T17:00:00+00:00"),
             doc("cafe" * 8, "SUCCESS", topic="out", offset=0, upstream="f00d" * 8))
    return str(path)


def test_cli_list_json(cli_index: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli("executions", "list", "--no-sync", "--index", cli_index, "--format", "json")
    out = capsys.readouterr().out
    assert code == 0
    rows = json.loads(out)
    # newest start first; equal starts: the later log record first
    assert [r["id"][:4] for r in rows] == ["beef", "cafe", "f00d"]
    assert {r["id"][:4]: r["runs"] for r in rows}["f00d"] == 2
    code = run_cli("executions", "list", "--no-sync", "--index", cli_index, "--format", "json",
                   "--state", "failed")
    assert [r["id"][:4] for r in json.loads(capsys.readouterr().out)] == ["f00d"]


def test_cli_show_and_trace_json(cli_index: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("executions", "show", "f00df00d", "--no-sync", "--index", cli_index,
                   "--format", "json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == "f00d" * 8 and shown["state"] == "FAILED"
    assert [r["runId"] for r in shown["runs"]] == ["r1", "r2"]
    assert run_cli("executions", "trace", "orders", "0", "1", "--no-sync", "--index", cli_index,
                   "--format", "json") == 0
    traced = json.loads(capsys.readouterr().out)
    assert [(r["id"][:4], r["depth"]) for r in traced] == [("f00d", 0), ("cafe", 1)]


def test_cli_tables_render(cli_index: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (("list",), ("show", "f00d" * 8), ("trace", "orders", "0", "1"),
                 ("trace", "orders", "0", "99")):
        assert run_cli("executions", *argv, "--no-sync", "--index", cli_index) == 0
    out = capsys.readouterr().out
    assert "f00df00df00d" in out and "replayed 1 time" in out and "boom [x]" in out
    assert "orders/0@1" in out and "no execution recorded for orders/0@99" in out


def test_cli_user_errors_are_one_line(cli_index: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with ExecutionIndex(cli_index) as ix:
        ix.ingest(1, 0, None, json.dumps(doc("f00d" + "1" * 28)).encode(), log_topic=LOG)
    assert run_cli("executions", "show", "0123456789", "--no-sync", "--index", cli_index) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no execution matches" in err
    assert run_cli("executions", "show", "f00d", "--no-sync", "--index", cli_index) == 1
    assert "at least 6" in capsys.readouterr().err
    assert run_cli("executions", "show", "f00df0", "--no-sync", "--index", cli_index) == 0
    capsys.readouterr()
    assert run_cli("executions", "show", "f00d11", "--no-sync", "--index", cli_index) == 0
    capsys.readouterr()
    with ExecutionIndex(cli_index) as ix:
        ix.ingest(1, 1, None, json.dumps(doc("f00df0" + "2" * 26)).encode(), log_topic=LOG)
    assert run_cli("executions", "show", "f00df0", "--no-sync", "--index", cli_index) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ambiguous" in err and "f00d" * 8 in err


def test_cli_unreachable_broker_fails_fast(cli_index: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    code = run_cli("executions", "list", "--index", cli_index, "--bootstrap", "127.0.0.1:1",
                   "--sync-timeout", "2")
    assert code == 1 and time.monotonic() - t0 < 10
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "127.0.0.1:1" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_parse_when() -> None:
    now = datetime.now(UTC)
    assert abs(parse_when("1h") - (now - timedelta(hours=1))) < timedelta(seconds=5)
    assert abs(parse_when("30m") - (now - timedelta(minutes=30))) < timedelta(seconds=5)
    assert parse_when("2026-11-25T16:00:00") == datetime(2026, 11, 25, 16, tzinfo=UTC)
    assert parse_when("2026-11-25T17:00:00+01:00") == datetime(2026, 11, 25, 16, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_when("yesterday")
    with pytest.raises(SystemExit) as exc:
        run_cli("executions", "list", "--since", "soon")
    assert exc.value.code == 2


def test_another_process_holding_the_index(tmp_path: Path) -> None:
    """DuckDB lets one process open the file: another waits for it, then gives up with a
    one-line error; threads of one process share it."""
    path = tmp_path / "ix.duckdb"
    with ExecutionIndex(path) as ix:
        Feeder(ix)(doc("h" * 32))
        with ExecutionIndex(path) as same_process:  # a second instance in this process
            assert [r["id"] for r in same_process.list()] == ["h" * 32]
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from waxflow.recovery.index import ExecutionIndex\n"
         f"ix = ExecutionIndex({str(path)!r})\n"
         "print('open', flush=True)\n"
         "sys.stdin.readline()\n"
         "ix.close()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(IndexBusyError) as err:
            ExecutionIndex(path, lock_timeout=0.5)
        assert "in use by another process" in str(err.value) and "\n" not in str(err.value)
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        with ExecutionIndex(path, lock_timeout=60) as ix:  # waits until the holder closes
            assert [r["id"] for r in ix.list()] == ["h" * 32]
    finally:
        holder.kill()
        holder.wait()


def test_documents_with_task_runs_and_logs_index_the_same(index: ExecutionIndex) -> None:
    """Documents with task runs and logs (whose outputs, labels and messages hold text like
    the top-level keys) give the same summary columns as bare ones."""
    runs = [{"taskId": "t", "type": "core.Log", "parentTaskId": None, "state": "FAILED",
             "attempts": [{"state": "FAILED", "startDate": None, "endDate": None,
                           "error": "x"}],
             "outputs": {"tricky": [1], "error": "not the top-level one"}}]
    logs = [{"ts": "2026-11-25T16:00:00+00:00", "level": "INFO", "taskId": "t",
             "taskRunId": "t-0", "attempt": 1, "message": 'a ],"error": in text ' + "x" * 2000}]
    clean_runs = [{**runs[0], "outputs": {"value": "y" * 500}}]
    plain = doc("l1" * 16, "FAILED", upstream="u" * 32, taskRuns=clean_runs,
                error={"taskId": "t", "message": "boom"}, labels={"team": "a"})
    plain.update(logs=logs, logsDropped=4, truncated=True)
    nested = doc("l2" * 16, "FAILED", upstream="u" * 32, taskRuns=runs,
                 error={"taskId": "t", "message": "boom"},
                 labels={"logs": "[not a list]", "error": "label"})
    nested["logs"] = logs
    values = [json.dumps(d, separators=(",", ":")).encode() for d in (plain, nested)]
    assert index.ingest_batch(LOG, [(0, n, d["id"].encode(), v, None) for n, (d, v) in
                                    enumerate(zip((plain, nested), values, strict=True))]) == 2
    rows = index.list()
    assert len(rows) == 2
    for row in rows:
        assert row["state"] == "FAILED" and row["upstreamExecutionId"] == "u" * 32
        assert row["error"] == {"taskId": "t", "message": "boom"}
        assert row["trigger"]["topic"] == "orders"


def test_a_file_that_is_no_index_is_left_alone(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes, not an index\n" * 10)
    with pytest.raises(OSError, match="not an execution index"):
        ExecutionIndex(path)
    assert path.read_text().startswith("my notes")
    assert run_cli("executions", "list", "--no-sync", "--index", str(path)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an execution index" in err


def test_bulk_decoding_skips_json_that_is_no_object(index: ExecutionIndex) -> None:
    """Without a value that is not JSON in the batch (the bulk path throughout): a JSON
    array or string is skipped, an object after white space is a document; a value that is
    not UTF-8 sends the batch one by one, with the same result for the others."""
    a, b = "a" * 32, "b" * 32
    records: list[tuple[int, int, bytes | None, bytes | None, int | None]] = [
        (0, 0, b"x", b"[1, 2]", None),
        (0, 1, b"y", b'"text"', None),
        (0, 2, a.encode(), b"  \n " + json.dumps(doc(a, "RUNNING")).encode(), None),
        (0, 3, b"z", b"17", None),
    ]
    assert index.ingest_batch(LOG, records) == 1
    assert [r["id"] for r in index.list()] == [a]
    assert index.ingest_batch(LOG, [
        (0, 4, b"w", b'{"id": "\xff"}', None),
        (0, 5, b.encode(), json.dumps(doc(b, "FAILED")).encode(), None),
        (0, 6, b"v", b"[3]", None)]) == 1
    assert sorted(r["id"] for r in index.list()) == [a, b]
