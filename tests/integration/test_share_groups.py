"""G4 share groups on the real broker (record lock 1 s): competing ``waxflow run`` processes
on one partition, acks by outcome, the delivery limit, and a SIGKILLed consumer.

Records are produced in small producer batches: the broker acquires whole producer batches
(``max.poll.records`` is a soft limit), so one fat batch would go to a single consumer.
Each execution names the process that ran it (``$WAXFLOW_WORKER_NAME`` through
``tests.flow_funcs:whoami``); each process logs its ack counts when it stops.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from tests.flow_helpers import (
    LogWatcher,
    created_log_topic,
    flow_env,
    latest_by_id,
    log_documents,
    run_flow,
    runs_by_id,
    start_flow,
    write_flow,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WORKERS = ("p0", "p1", "p2")

FLOW = """
id: share-test
namespace: tests.share
triggers:
  - id: queue
    type: kafka.RealtimeTrigger
    topic: @TOPIC@
    groupId: @GROUP@
    groupType: SHARE
    valueDeserializer: JSON
    maxConcurrency: 16
    properties: {max.poll.records: @BATCH@@PROPS@}
@EXTRA@
errors:
  - {id: notify, type: core.Log, level: WARN, message: "{{ execution.id }} failed"}
"""


log_topic = created_log_topic


def share_flow(tmp_path: Path, topic: str, group: str, tasks: str, batch: int = 10,
               extra: str = "", props: str = "") -> Path:
    """A share-group flow; ``props`` is more of the trigger's properties (``, k: v``)."""
    text = (FLOW.replace("@TOPIC@", topic).replace("@GROUP@", group)
            .replace("@BATCH@", str(batch)).replace("@PROPS@", props)
            .replace("@EXTRA@\n", extra + tasks))
    return write_flow(tmp_path, text)


def produce_small_batches(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Produce with producer batches of at most 10 records (the broker's acquisition unit)."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 10})
    for v in values:
        p.produce(topic, value=v)
    assert p.flush(30) == 0


def ids_json(ids: list[Any]) -> list[bytes]:
    return [json.dumps({"id": i}).encode() for i in ids]


def ack_summary(stderr: str) -> Counter[str]:
    """Sum of the ack counts every consumer of a process logged when it stopped."""
    total: Counter[str] = Counter()
    for m in re.finditer(r"acks ACCEPT=(\d+) RELEASE=(\d+) REJECT=(\d+); ack errors=(\d+)",
                         stderr):
        for name, value in zip(("ACCEPT", "RELEASE", "REJECT", "errors"), m.groups(),
                               strict=True):
            total[name] += int(value)
    return total


def assert_acks(history: list[dict[str, Any]], expected: list[str]) -> None:
    """The ack each delivery's terminal document records (``trigger.ack``), when the
    execute step writes it."""
    if any("ack" in d["trigger"] for d in history):
        assert [d["trigger"].get("ack") for d in history] == expected, history


def started(doc: dict[str, Any]) -> float:
    return datetime.fromisoformat(doc["startDate"]).timestamp()



@contextmanager
def workers(flow: Path, bootstrap: str, log: str, idle: float,
            names: tuple[str, ...] = WORKERS) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """``waxflow run`` processes of one flow, one per name; killed if still running at the
    end."""
    procs = {name: start_flow(flow, flow_env(bootstrap, log, PYTHONPATH=str(REPO),
                                             WAXFLOW_WORKER_NAME=name,
                                             WAXFLOW_LOG_LEVEL="INFO"), idle=idle)
             for name in names}
    try:
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def warm_up(bootstrap: str, topic: str, watcher: LogWatcher,
            names: tuple[str, ...] = WORKERS, timeout: float = 90) -> None:
    """Trickle records until every process has run one: all consumers are in the group."""
    deadline = time.monotonic() + timeout
    n = 0
    warm = set()
    while set(watcher.successes(warm).values()) != set(names):
        assert time.monotonic() < deadline, f"not all joined: {watcher.successes(warm)}"
        warm.add(f"w{n}")
        produce_small_batches(bootstrap, topic, ids_json([f"w{n}"]))
        n += 1
        watcher.pump(0.2)


def test_three_processes_share_one_partition(
        bootstrap: str, admin: AdminClient, new_topic: Callable[..., str],
        tmp_path: Path) -> None:
    topic, group, log = new_topic(1), f"share-{uuid.uuid4().hex[:8]}", log_topic(admin)
    flow = share_flow(tmp_path, topic, group, """\
tasks:
  - {id: work, type: core.Python, function: "tests.flow_funcs:whoami", args: {ms: 10}}
""")
    n = 3000
    watcher = LogWatcher(bootstrap, log)
    try:
        with workers(flow, bootstrap, log, idle=8) as procs:
            warm_up(bootstrap, topic, watcher)
            produce_small_batches(bootstrap, topic, ids_json(list(range(n))))
            main = set(range(n))
            watcher.wait(lambda: len(watcher.successes(main)) == n, 240, f"{n} successes")
            outs = {name: p.communicate(timeout=60) for name, p in procs.items()}
            codes = {name: p.returncode for name, p in procs.items()}
    finally:
        watcher.close()
    assert codes == dict.fromkeys(WORKERS, 0), {k: outs[k][1][-2000:] for k in outs}

    docs = log_documents(bootstrap, log)
    latest = latest_by_id(docs)
    by_record: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for d in docs:
        if d["state"] == "SUCCESS" and isinstance(d["taskRuns"][0]["outputs"]["id"], int):
            by_record[d["taskRuns"][0]["outputs"]["id"]].append(d)
    acks = sum((ack_summary(err) for _, err in outs.values()), Counter())
    lock_warnings = sum(err.count("of the broker's record lock") for _, err in outs.values())
    # all processed, each to SUCCESS once per delivery: a record runs again only when the
    # broker delivered it again because its batch was held past the 1 s lock (a loaded
    # machine: CI once saw 19 of 3000 at load 7); the processes then logged lock warnings or
    # ack errors, and the second run is a new delivery (G4: at least once, ack by outcome)
    assert sorted(by_record) == list(range(n))
    twice = [k for k, v in by_record.items() if len(v) > 1]
    if twice:
        assert lock_warnings + acks["errors"] > 0, f"{len(twice)} ran twice, e.g. {twice[:5]}"
        for k in twice:
            counts = [d["trigger"]["deliveryCount"] for d in by_record[k]]
            assert len(set(counts)) == len(counts), (k, counts)  # one run per delivery
    ids = {v[0]["id"] for v in by_record.values()}
    assert len(ids) == n  # one execution id per record, whatever the deliveries
    runs = runs_by_id(docs)
    assert all(len(runs[v[0]["id"]]) == len(v) for v in by_record.values())
    assert all(latest[i]["state"] == "SUCCESS" for i in ids)
    assert all(latest[v[0]["id"]]["trigger"]["deliveryCount"] == 1
               for k, v in by_record.items() if k not in twice)
    # each process did at least 20% of the work
    share = Counter(v[0]["taskRuns"][0]["outputs"]["worker"] for v in by_record.values())
    print(f"work per process: {dict(share)}")
    assert set(share) == set(WORKERS)
    assert all(c >= 0.2 * n for c in share.values()), share
    # every ack was an ACCEPT and none failed
    assert acks["ACCEPT"] == len(runs) and acks["RELEASE"] == acks["REJECT"] == 0, acks
    assert acks["errors"] == 0, acks


def test_fail_then_succeed_is_released_and_redelivered(
        bootstrap: str, admin: AdminClient, new_topic: Callable[..., str],
        tmp_path: Path) -> None:
    topic, group, log = new_topic(1), f"share-{uuid.uuid4().hex[:8]}", log_topic(admin)
    marks = tmp_path / "marks"
    marks.mkdir()
    flow = share_flow(tmp_path, topic, group, f"""\
tasks:
  - id: work
    type: core.Python
    function: "tests.flow_funcs:fail_once"
    args: {{marks: "{marks}"}}
""")
    produce_small_batches(bootstrap, topic, ids_json(["a", "b", "c", "d", "e"]))

    result = run_flow(flow, flow_env(bootstrap, log, PYTHONPATH=str(REPO),
                                     WAXFLOW_LOG_LEVEL="INFO"), idle=4, timeout=120)

    assert result.returncode == 0, result.stderr[-3000:]
    docs = [d for d in log_documents(bootstrap, log) if d["terminal"]]
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in docs:
        by_id[d["id"]].append(d)
    assert len(by_id) == 5  # both deliveries under one execution id
    for history in by_id.values():
        assert [(d["state"], d["trigger"]["deliveryCount"]) for d in history] == [
            ("FAILED", 1), ("SUCCESS", 2)], history
        assert_acks(history, ["RELEASE", "ACCEPT"])
        assert len({d["runId"] for d in history}) == 2
        assert history[0]["trigger"]["offset"] == history[1]["trigger"]["offset"]
    acks = ack_summary(result.stderr)
    assert (acks["ACCEPT"], acks["RELEASE"], acks["REJECT"], acks["errors"]) == (5, 5, 0, 0), \
        result.stderr[-3000:]


def test_always_failing_is_rejected_at_max_deliveries(
        bootstrap: str, admin: AdminClient, new_topic: Callable[..., str],
        tmp_path: Path) -> None:
    topic, group, log = new_topic(1), f"share-{uuid.uuid4().hex[:8]}", log_topic(admin)
    flow = share_flow(tmp_path, topic, group, """\
tasks:
  - {id: boom, type: core.Fail, errorMessage: "always fails"}
""", extra="    maxDeliveries: 3\n")
    produce_small_batches(bootstrap, topic, [*ids_json(["x", "y"]), b"{not json"])
    env = flow_env(bootstrap, log, PYTHONPATH=str(REPO), WAXFLOW_LOG_LEVEL="INFO")

    # idle 6 s = six lock periods after the last delivery: a 4th delivery would show up
    result = run_flow(flow, env, idle=6, timeout=120)

    assert result.returncode == 0, result.stderr[-3000:]
    docs = [d for d in log_documents(bootstrap, log) if d["terminal"]]
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in docs:
        by_id[d["id"]].append(d)
    assert len(by_id) == 3
    histories = sorted(by_id.values(), key=lambda h: h[0]["trigger"]["offset"])
    for history in histories[:2]:
        assert [(d["state"], d["trigger"]["deliveryCount"]) for d in history] == [
            ("FAILED", 1), ("FAILED", 2), ("FAILED", 3)], history
        assert "always fails" in history[-1]["error"]["message"]
        assert_acks(history, ["RELEASE", "RELEASE", "REJECT"])
    poison = histories[2]
    assert [(d["state"], d["trigger"]["deliveryCount"]) for d in poison] == [("SKIPPED", 1)]
    assert_acks(poison, ["REJECT"])
    acks = ack_summary(result.stderr)
    assert (acks["ACCEPT"], acks["RELEASE"], acks["REJECT"], acks["errors"]) == (0, 4, 3, 0), \
        result.stderr[-3000:]

    # never delivered again, not even to a new consumer of the group
    again = run_flow(flow, env, idle=3, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len([d for d in log_documents(bootstrap, log) if d["terminal"]]) == len(docs)
    assert sum(ack_summary(again.stderr).values()) == 0


INTERRUPT_TASKS = """\
tasks:
  - id: work
    type: core.Python
    function: "tests.flow_funcs:whoami"
    args: {ms: 300, marks: "@MARKS@", again_ms: @AGAIN@}
"""


def tasks(marks: Path, again_ms: int) -> str:
    return INTERRUPT_TASKS.replace("@MARKS@", str(marks)).replace("@AGAIN@", str(again_ms))


def begun_by(marks: Path, worker: str) -> set[int]:
    """Main record ids whose work ``worker`` has started (marker files)."""
    return {int(p.name.split(".", 1)[1]) for p in marks.glob(f"{worker}.*")
            if p.name.split(".", 1)[1].isdigit()}


def wait_mid_batch(watcher: LogWatcher, marks: Path, victim: str, main: set[int]) -> set[int]:
    """Wait until ``victim`` runs records it has not finished; return their ids."""
    in_flight: set[int] = set()

    def mid_batch() -> bool:
        nonlocal in_flight
        done = watcher.successes(main)
        in_flight = begun_by(marks, victim) - set(done)
        return len(done) > 50 and bool(in_flight)

    watcher.wait(mid_batch, 120, "the victim to be mid-batch")
    return in_flight


def success_docs(docs: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """Record id → its SUCCESS documents, in log order."""
    out: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for d in docs:
        if d["state"] == "SUCCESS":
            out[d["taskRuns"][0]["outputs"]["id"]].append(d)
    return out


def test_sigkill_one_consumer_its_records_go_to_the_others(
        bootstrap: str, admin: AdminClient, new_topic: Callable[..., str],
        tmp_path: Path) -> None:
    """SIGKILL closes the victim's connections: the broker releases its acquired records
    (at the latest when their lock expires) and the others run them; none is lost."""
    topic, group, log = new_topic(1), f"share-{uuid.uuid4().hex[:8]}", log_topic(admin)
    marks = tmp_path / "marks"
    marks.mkdir()
    # batches of 8 records, 300 ms each, run concurrently: well inside the 1 s lock
    flow = share_flow(tmp_path, topic, group, tasks(marks, 300), batch=8)
    n, victim = 600, "p1"
    main = set(range(n))
    watcher = LogWatcher(bootstrap, log)
    try:
        with workers(flow, bootstrap, log, idle=8) as procs:
            warm_up(bootstrap, topic, watcher)
            produce_small_batches(bootstrap, topic, ids_json(list(range(n))))
            wait_mid_batch(watcher, marks, victim, main)
            os.killpg(procs[victim].pid, signal.SIGKILL)
            killed_at = time.time()
            procs[victim].wait()
            watcher.wait(lambda: len(watcher.successes(main)) == n, 240, f"{n} successes")
            outs = {k: p.communicate(timeout=60) for k, p in procs.items() if k != victim}
            codes = {k: procs[k].returncode for k in outs}
    finally:
        watcher.close()
    assert codes == {"p0": 0, "p2": 0}, {k: v[1][-2000:] for k, v in outs.items()}

    docs = log_documents(bootstrap, log)
    terminal_runs = {d["runId"] for d in docs if d["terminal"]}
    orphans = {d["id"] for d in docs if d["state"] == "RUNNING"
               and d["runId"] not in terminal_runs}
    assert orphans, "the victim was killed mid-batch: some runs never finished"
    final = latest_by_id(docs)
    delays = []
    for exec_id in orphans:
        redo = [d for d in docs if d["id"] == exec_id and d["state"] == "SUCCESS"]
        assert redo, f"the record of execution {exec_id} was lost"
        assert redo[-1]["trigger"]["deliveryCount"] >= 2
        assert redo[-1]["taskRuns"][0]["outputs"]["worker"] != victim
        assert final[exec_id]["state"] == "SUCCESS"
        delays.append(started(redo[-1]) - killed_at)
    # none lost: every record has a SUCCESS document, all under one execution id
    successes = success_docs(docs)
    assert main <= set(successes)
    assert all(len({d["id"] for d in successes[i]}) == 1 for i in main)
    assert all(final[successes[i][0]["id"]]["state"] == "SUCCESS" for i in main)
    print(f"killed {victim} with {len(orphans)} executions in flight; redelivered "
          f"{min(delays):.2f}-{max(delays):.2f}s after the kill")


def test_hung_consumer_loses_the_lock_and_its_late_acks_fail(
        bootstrap: str, admin: AdminClient, new_topic: Callable[..., str],
        tmp_path: Path) -> None:
    """SIGSTOP keeps the victim's connections open: its records go to the other consumer
    only when their lock (4 s here) expires; after SIGCONT its executions finish (a second
    run under the same execution id) and its acks fail, logged with their offsets and
    counted.

    The victim resumes while the other consumer holds the records (it works 2.5 s on a record
    seen before, well inside its own lock even when it fetched them ahead): a late ack of a
    record held by another member fails. One of a record already acknowledged elsewhere is
    ignored by the broker (measured on 4.2: no error), so resuming the victim later would
    test nothing; with the group's 1 s lock, the other consumer's own lock ran out under CI
    load and the resumed victim re-acquired the records, so its acks were not late.)"""
    topic, group, log = new_topic(1), f"share-{uuid.uuid4().hex[:8]}", log_topic(admin)
    marks = tmp_path / "marks"
    marks.mkdir()
    flow = share_flow(tmp_path, topic, group, tasks(marks, 2500), batch=8,
                      props=", share.record.lock.duration.ms: 4000")
    n, names, victim = 300, ("p0", "p1"), "p0"
    main = set(range(n))
    watcher = LogWatcher(bootstrap, log)
    try:
        with workers(flow, bootstrap, log, idle=8, names=names) as procs:
            warm_up(bootstrap, topic, watcher, names)
            produce_small_batches(bootstrap, topic, ids_json(list(range(n))))
            held: set[int] = set()
            while not held:  # stop it while it runs records (not between poll and work)
                wait_mid_batch(watcher, marks, victim, main)
                os.killpg(procs[victim].pid, signal.SIGSTOP)
                stopped_at = time.time()
                watcher.pump(0.3)
                held = begun_by(marks, victim) - set(watcher.successes(main))
                if not held:
                    os.killpg(procs[victim].pid, signal.SIGCONT)
            # resume the victim while the other consumer holds the redelivered records
            watcher.wait(lambda: bool(held & begun_by(marks, "p1")), 60,
                         "the other consumer to run the held records")
            os.killpg(procs[victim].pid, signal.SIGCONT)
            watcher.wait(lambda: len(watcher.successes(main)) == n, 240, f"{n} successes")
            outs = {k: p.communicate(timeout=60) for k, p in procs.items()}
            codes = {k: p.returncode for k, p in procs.items()}
    finally:
        watcher.close()
    assert codes == {"p0": 0, "p1": 0}, {k: v[1][-2000:] for k, v in outs.items()}

    successes = success_docs(log_documents(bootstrap, log))
    delays = []
    for rid in held:
        runs = successes[rid]
        other = [d for d in runs if d["taskRuns"][0]["outputs"]["worker"] != victim]
        if not other:  # the victim resumed in time for this one (it kept or regained it)
            continue
        assert other[0]["trigger"]["deliveryCount"] >= 2, runs
        assert len({d["id"] for d in runs}) == 1  # every run under one execution id
        delays.append(started(other[0]) - stopped_at)
    assert delays, "the other consumer ran none of the held records"
    # acquired at most ~0.4 s before the stop, so the 4 s lock ran out >= 3.6 s after it
    assert min(delays) >= 3.3, delays
    late = ack_summary(outs[victim][1])
    assert late["errors"] >= 1, outs[victim][1][-3000:]
    assert "INVALID_RECORD_STATE" in outs[victim][1]
    assert re.search(r"acks for \S+/0 offsets [0-9, -]+ failed", outs[victim][1])
    assert main <= set(successes)
    print(f"held {len(held)} records; redelivered {min(delays):.2f}-{max(delays):.2f}s after "
          f"the stop; victim ack errors: {late['errors']}")
