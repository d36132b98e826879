"""Prometheus metrics of a running flow (``waxflow run --metrics-port N``).

Everything is off until :func:`enable` (the runner calls it when a metrics port is set): the
hooks below are then cheap no-ops, so code paths may call them unconditionally.

Where the numbers come from (one process, one flow):

- **Execution documents** (:func:`document_written` / :func:`document_done`, called by the
  execution log's producer, whichever code path sends through it): every execution's
  documents pass through it, so executions by state, execution and task durations, task
  attempts and retries, records consumed and skipped, batch sizes (``kafka.Trigger``) and rows
  loaded (``*.Load`` tasks' ``rows`` output) are read from the terminal document once the
  broker acknowledged it (the execution is *done*); the RUNNING document marks it in flight.
  DLQ records are the other records that producer delivers.
- **Settled executions** (:func:`executions_done`, :func:`execution_running`): in quiet mode
  (consumer groups, :mod:`waxflow.operators.pipeline`) documents go to a producer that
  reports no delivery, so the pipeline counts the executions it settles at each snapshot
  (their terminal documents acknowledged: done), in bulk, from the execution objects or
  what the compiled path keeps: the same metrics, by the same labels, as from the
  documents; they appear within a snapshot (~200 ms) of the acknowledgement.
- **librdkafka statistics** (:func:`kafka_stats`, the ``stats_cb`` that
  :func:`waxflow.connectors.kafka_config.client_conf` installs when metrics are on): consumer
  lag per partition (high watermark, or last stable offset under ``read_committed``, minus
  the group's committed offset) and which partitions are being fetched (readiness).
- **Share groups**: the ack counters the share source keeps
  (``waxflow.connectors.kafka_share.STATS``), read at scrape time.
- **Hooks** for code that knows something the documents do not, no-ops while metrics are
  off: :func:`transaction` (Kafka transactions committed/aborted), :func:`commit_sent` /
  :func:`commit_answered` (an offset commit's round trip), :func:`batch_size` (records
  handed to an execute step).
- The process itself: prometheus-client's process and GC collectors (memory, CPU, fds).

With ``--processes N`` each process serves its own registry on ``port + process index``
(see :mod:`waxflow.connectors.health`): sum over instances in PromQL.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from waxflow.execution import Execution

LOG = logging.getLogger("waxflow.metrics")

#: librdkafka statistics interval when metrics are on (``$WAXFLOW_STATS_INTERVAL_MS``)
DEFAULT_STATS_MS = 5000
#: a partition's lag is dropped once its client sent no statistics for this many intervals
#: (the client was closed: a source partition stopped, a ``kafka.Consume`` task ended)
STALE_INTERVALS = 3

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
                     300, 600, 1800, 3600)
_SIZE_BUCKETS = (1, 10, 50, 100, 500, 1000, 5000, 10_000, 50_000, 100_000, 500_000, 1_000_000)


class _Fast:
    """Counters and histograms fed once per execution, kept as plain dicts under one lock
    and turned into metric families at scrape time (measured: prometheus-client's
    ``labels(...).inc()``/``observe()`` cost ~5 us each, a dozen per execution)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[str, tuple[str, list[str], dict[tuple[str, ...], float]]] = {}
        self.histograms: dict[str, tuple[str, list[str], tuple[float, ...],
                                         dict[tuple[str, ...], list[float]]]] = {}

    def counter(self, name: str, doc: str, labels: list[str]) -> str:
        self.counters[name] = (doc, labels, {})
        return name

    def histogram(self, name: str, doc: str, labels: list[str],
                  buckets: tuple[float, ...]) -> str:
        self.histograms[name] = (doc, labels, buckets, {})
        return name

    def inc(self, name: str, key: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.counters[name][2]
        values[key] = values.get(key, 0.0) + amount  # callers hold self.lock

    def observe(self, name: str, key: tuple[str, ...], value: float) -> None:
        _doc, _labels, buckets, values = self.histograms[name]
        counts = values.get(key)
        if counts is None:
            counts = values[key] = [0.0] * (len(buckets) + 2)  # buckets, +Inf, sum
        counts[bisect.bisect_left(buckets, value)] += 1
        counts[-1] += value

    def collect(self) -> Iterator[Any]:
        with self.lock:
            counters = [(n, d, lab, dict(v)) for n, (d, lab, v) in self.counters.items()]
            histograms = [(n, d, lab, b, {k: list(c) for k, c in v.items()})
                          for n, (d, lab, b, v) in self.histograms.items()]
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        for name, doc, labels, values in counters:
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, value in sorted(values.items()):
                family.add_metric(list(key), value)
            yield family
        for name, doc, labels, buckets, hvalues in histograms:
            hist = HistogramMetricFamily(name, doc, labels=labels)
            for key, counts in sorted(hvalues.items()):
                cumulative, total = [], 0.0
                for bound, count in zip((*buckets, math.inf), counts, strict=False):
                    total += count
                    cumulative.append(("+Inf" if math.isinf(bound) else repr(float(bound)), total))
                hist.add_metric(list(key), cumulative, counts[-1])
            yield hist


FAST = _Fast()
EXECUTIONS = FAST.counter("waxflow_executions", "Executions done (terminal document "
                          "acknowledged by the broker), by flow and terminal state",
                          ["flow", "state"])
EXECUTION_SECONDS = FAST.histogram("waxflow_execution_duration_seconds", "Duration of done "
                                   "executions (startDate to endDate)", ["flow"],
                                   _DURATION_BUCKETS)
TASK_SECONDS = FAST.histogram("waxflow_task_duration_seconds", "Duration of task runs of done "
                              "executions (first attempt's start to last attempt's end)",
                              ["flow", "task", "type"], _DURATION_BUCKETS)
TASK_ATTEMPTS = FAST.counter("waxflow_task_attempts", "Task attempts of done executions, by "
                             "the attempt's state", ["flow", "task", "state"])
TASK_RETRIES = FAST.counter("waxflow_task_retries", "Task attempts after the first (retries) "
                            "of done executions", ["flow", "task"])
RECORDS = FAST.counter("waxflow_records_consumed", "Kafka records whose execution is done (a "
                       "record's own execution, or its batch's), skipped ones included",
                       ["flow", "topic"])
SKIPPED = FAST.counter("waxflow_records_skipped", "Records that did not deserialize "
                       "(onSerdeError SKIPPED or DLQ)", ["flow", "topic"])
BATCH_RECORDS = FAST.histogram("waxflow_batch_records", "Records per batch: kafka.Trigger "
                               "batch executions (kind=trigger) and batches handed to an "
                               "execute step (kind=step)", ["flow", "kind"], _SIZE_BUCKETS)
ROWS_LOADED = FAST.counter("waxflow_rows_loaded", "Rows written by warehouse Load tasks of "
                           "done executions (their `rows` output)", ["flow", "task", "type"])


class Prometheus:
    """prometheus-client's registry of this process and the metrics it keeps itself, made on
    first use (:func:`prometheus`): a run without ``--metrics-port`` never imports
    prometheus-client (measured: ~40 ms of CPU per process, with the ``http.server`` it
    imports)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.in_flight = Gauge(
            "waxflow_executions_in_flight", "Executions whose RUNNING document was written "
            "and whose terminal document was not yet acknowledged", ["flow"],
            registry=self.registry)
        self.dlq = Counter("waxflow_dlq_records", "Records sent to a dead-letter topic "
                           "(delivery acknowledged)", ["flow", "topic"], registry=self.registry)
        self.transactions = Counter("waxflow_kafka_transactions", "Kafka producer transactions "
                                    "by outcome (commit, abort)", ["flow", "outcome"],
                                    registry=self.registry)
        self.commit_seconds = Histogram(
            "waxflow_offset_commit_seconds", "Round trip of consumer-group offset commits "
            "(request to broker answer)", ["flow"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry)
        self.commits = Counter("waxflow_offset_commits", "Consumer-group offset commits by "
                               "outcome", ["flow", "outcome"], registry=self.registry)
        self.info = Gauge("waxflow_info", "The flow this process runs (value 1)",
                          ["flow", "process_id", "version"], registry=self.registry)
        self.extra_collectors = False  # enable() registered the process and Kafka collectors


@functools.cache
def prometheus() -> Prometheus:
    """This process's :class:`Prometheus` (made, importing prometheus-client, on first
    call)."""
    return Prometheus()


#: the module's prometheus-client objects by their former names (``metrics.REGISTRY``...)
_LAZY = {"REGISTRY": "registry", "IN_FLIGHT": "in_flight", "DLQ": "dlq",
         "TRANSACTIONS": "transactions", "COMMIT_SECONDS": "commit_seconds",
         "COMMITS": "commits", "INFO": "info"}


def __getattr__(name: str) -> Any:
    """``REGISTRY``, ``IN_FLIGHT``, ``DLQ``, ``TRANSACTIONS``, ``COMMIT_SECONDS``,
    ``COMMITS``, ``INFO``: the attributes of :func:`prometheus` (made on first use)."""
    attr = _LAZY.get(name)
    if attr is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(prometheus(), attr)


class _State:
    """Process-wide switches and what the collectors read."""

    def __init__(self) -> None:
        self.enabled = False
        self.flow = ""
        self.topics: list[str] = []
        self.pattern: re.Pattern[str] | None = None
        self.stats_ms = DEFAULT_STATS_MS
        self.lock = threading.Lock()
        #: (topic, partition) -> (lag, monotonic time of the statistics)
        self.lag: dict[tuple[str, int], tuple[int, float]] = {}
        #: (topic, partition) -> monotonic time a client last reported it being fetched
        self.fetching: dict[tuple[str, int], float] = {}
        #: monotonic time a consumer last reported its group session up (share groups)
        self.group_up: float | None = None
        #: execution id -> monotonic time its RUNNING document was written
        self.running: dict[str, float] = {}
        #: monotonic time an execution last finished (or work started after an idle spell)
        self.progress = time.monotonic()
        self.done = 0


STATE = _State()


def enabled() -> bool:
    return STATE.enabled


def enable(flow: str, *, topics: Iterable[str] = (), pattern: str | None = None,
           process_id: int | None = None) -> None:
    """Turn metrics on for this process, running ``flow`` (``namespace.id``) whose trigger
    reads ``topics`` (or the topics matching ``pattern``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("waxflow")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        ver = "unknown"
    STATE.flow = flow
    STATE.topics = list(topics)
    STATE.pattern = re.compile(pattern) if pattern else None
    raw = os.environ.get("WAXFLOW_STATS_INTERVAL_MS", "")
    STATE.stats_ms = int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_STATS_MS
    prom = prometheus()
    prom.info.labels(flow, str(process_id or 0), ver).set(1)
    for outcome in ("commit", "abort"):
        prom.transactions.labels(flow, outcome)
    with FAST.lock:
        FAST.inc(EXECUTIONS, (flow, "SUCCESS"), 0)
    prom.in_flight.labels(flow).set_function(lambda: len(STATE.running))
    if not prom.extra_collectors:
        from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

        for collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
            prom.registry.register(collector)
        prom.registry.register(_KafkaCollector())  # (Collector is a Protocol)
        prom.registry.register(_FastCollector())
        prom.extra_collectors = True
    STATE.enabled = True


# ------------------------------------------------------------------ execution documents
def is_terminal(document: bytes) -> bool:
    """Whether an encoded execution document is terminal (reads its head, parses only a
    document whose ``terminal`` key is not near the start)."""
    head = document.find(b'"terminal":', 0, 1024)
    return document[head + 11:head + 12] == b"t" if head >= 0 else _terminal(document)


def document_written(execution_id: str, document: bytes) -> bool:
    """A document was handed to the execution log: note a RUNNING one (in flight); return
    whether it is terminal (:func:`document_done` follows once the broker acknowledged
    it)."""
    terminal = is_terminal(document)
    if not terminal:
        execution_running(execution_id)
    return terminal


def execution_running(execution_id: str) -> None:
    """A RUNNING document of ``execution_id`` was sent: it is in flight until done."""
    with STATE.lock:
        if not STATE.running:
            STATE.progress = time.monotonic()  # work starts after an idle spell
        STATE.running.setdefault(execution_id, time.monotonic())


def _terminal(document: bytes) -> bool:
    try:
        return bool(json.loads(document).get("terminal"))
    except (ValueError, AttributeError):
        return False


def document_done(execution_id: str, document: bytes) -> None:
    """A terminal document was acknowledged by the broker: its execution is done."""
    with STATE.lock:
        STATE.running.pop(execution_id, None)
        STATE.progress = time.monotonic()
        STATE.done += 1
    try:
        observe_document(json.loads(document))
    except Exception:  # a metric must never fail the work
        LOG.debug("cannot read an execution document for metrics", exc_info=True)


#: a compiled-path execution settled done (:func:`executions_done`): its id, flow
#: (``namespace.id``), trigger topic, duration in seconds and its task runs' (task id, type),
#: each SUCCESS in one attempt lasting the execution's duration
Compiled = tuple[str, str, str, float, Sequence[tuple[str, str]]]


def executions_done(executions: Sequence[Execution] = (), *,
                    compiled: Sequence[Compiled] = ()) -> None:
    """Executions whose terminal documents the broker acknowledged, settled together (quiet
    mode, :meth:`Pipeline._settle <waxflow.operators.pipeline.Pipeline._settle>`): each is
    done and counted exactly as :func:`document_done` counts its terminal document, from the
    execution object (``executions``) or what the compiled path keeps (``compiled``, all
    SUCCESS), with no document parsed. A no-op while metrics are off."""
    if not STATE.enabled or not (executions or compiled):
        return
    try:
        now_ = time.monotonic()
        with STATE.lock:
            running = STATE.running
            if running:
                for execution in executions:
                    running.pop(execution.id, None)
                for entry in compiled:
                    running.pop(entry[0], None)
            STATE.progress = now_
            STATE.done += len(executions) + len(compiled)
        with FAST.lock:
            for execution in executions:
                _observe_execution(execution)
            _observe_compiled(compiled)
    except Exception:  # a metric must never fail the work
        LOG.debug("cannot count settled executions for metrics", exc_info=True)


def _observe_execution(execution: Execution) -> None:
    """Count one done execution from its object (callers hold ``FAST.lock``): what
    :func:`observe_document` counts of its terminal document."""
    trig = execution.trigger
    runs = []
    for run in execution.task_runs:
        attempts = run.attempts
        secs = ((attempts[-1].end - attempts[0].start).total_seconds()
                if attempts and attempts[-1].end is not None else None)
        runs.append((run.task_id, run.type, [str(a.state) for a in attempts], secs,
                     _rows_loaded(run.type, run.state, run.outputs)))
    _observe(f"{execution.namespace}.{execution.flow_id}", str(execution.state),
             (execution.end - execution.start).total_seconds()
             if execution.end is not None else None,
             topic=trig.topic, record=trig.offset is not None, offsets=trig.offsets,
             count=trig.messages_count, skipped=trig.skipped_count, runs=runs)


def _observe_compiled(compiled: Sequence[Compiled]) -> None:
    """Count compiled-path executions (callers hold ``FAST.lock``), tallied first: one
    counter update per flow, topic and task, one histogram update per execution and task
    run."""
    if not compiled:
        return
    flows: dict[str, int] = {}
    topics: dict[tuple[str, str], int] = {}
    tasks: dict[tuple[str, str, str], int] = {}
    for _id, flow, topic, secs, runs in compiled:
        flows[flow] = flows.get(flow, 0) + 1
        key = (flow, topic)
        topics[key] = topics.get(key, 0) + 1
        secs = max(secs, 0.0)
        FAST.observe(EXECUTION_SECONDS, (flow,), secs)
        for task, kind in runs:
            tkey = (flow, task, kind)
            tasks[tkey] = tasks.get(tkey, 0) + 1
            FAST.observe(TASK_SECONDS, tkey, secs)
    for flow, count in flows.items():
        FAST.inc(EXECUTIONS, (flow, "SUCCESS"), count)
    for key, count in topics.items():
        FAST.inc(RECORDS, key, count)
    for (flow, task, _kind), count in tasks.items():
        FAST.inc(TASK_ATTEMPTS, (flow, task, "SUCCESS"), count)


def _flow_of(doc: dict[str, Any]) -> str:
    return f"{doc.get('namespace')}.{doc.get('flowId')}"


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def observe_document(doc: dict[str, Any]) -> None:
    """Count one done execution from its terminal document."""
    flow, state = _flow_of(doc), str(doc.get("state"))
    trig = doc.get("trigger") or {}
    runs = [_task_run(flow, run) for run in doc.get("taskRuns") or ()]
    duration = doc.get("durationMs")
    with FAST.lock:
        _observe(flow, state, duration / 1000 if isinstance(duration, int | float) else None,
                 topic=trig.get("topic"), record=trig.get("offset") is not None,
                 offsets=trig.get("offsets"), count=trig.get("messagesCount"),
                 skipped=trig.get("skippedCount"), runs=runs)


def _observe(flow: str, state: str, seconds: float | None, *, topic: Any, record: bool,
             offsets: Any, count: Any, skipped: Any,
             runs: Iterable[tuple[str, str, list[str], float | None, int | None]]) -> None:
    """Count one done execution (callers hold ``FAST.lock``), whether read from its
    terminal document (:func:`observe_document`) or its object (:func:`executions_done`):
    ``record`` (one record of ``topic``) or ``offsets`` (a batch, ``count`` records and
    ``skipped``), and its task runs as :func:`_task_run` gives them."""
    FAST.inc(EXECUTIONS, (flow, state))
    if seconds is not None:
        FAST.observe(EXECUTION_SECONDS, (flow,), seconds)
    if record:
        FAST.inc(RECORDS, (flow, str(topic)))
        if state == "SKIPPED":
            FAST.inc(SKIPPED, (flow, str(topic)))
    elif offsets:  # a batch: counted on its topic (topics, comma-joined)
        topics = ",".join(sorted({k.rsplit("/", 1)[0] for k in offsets}))
        total = int(count or 0) + int(skipped or 0)
        FAST.inc(RECORDS, (flow, topics), total)
        if skipped:
            FAST.inc(SKIPPED, (flow, topics), int(skipped))
        FAST.observe(BATCH_RECORDS, (flow, "trigger"), total)
    for task, kind, states, secs, rows in runs:
        for attempt_state in states:
            FAST.inc(TASK_ATTEMPTS, (flow, task, attempt_state))
        if len(states) > 1:
            FAST.inc(TASK_RETRIES, (flow, task), len(states) - 1)
        if secs is not None:
            FAST.observe(TASK_SECONDS, (flow, task, kind), max(secs, 0.0))
        if rows is not None:
            FAST.inc(ROWS_LOADED, (flow, task, kind), rows)


def _task_run(flow: str, run: dict[str, Any]
              ) -> tuple[str, str, list[str], float | None, int | None]:
    """(task id, type, attempt states, duration, rows loaded) of a task run."""
    task, kind = str(run.get("taskId")), str(run.get("type"))
    attempts = run.get("attempts") or []
    secs = _seconds(attempts[0].get("startDate"), attempts[-1].get("endDate")) \
        if attempts else None
    return (task, kind, [str(a.get("state")) for a in attempts], secs,
            _rows_loaded(kind, run.get("state"), run.get("outputs")))


def _rows_loaded(kind: str, state: Any, outputs: Any) -> int | None:
    """The rows a successful ``*.Load`` task run loaded (its ``rows`` output), else None."""
    if (kind.endswith(".Load") and state in ("SUCCESS", "WARNING")
            and isinstance(outputs, dict) and isinstance(outputs.get("rows"), int)):
        return int(outputs["rows"])
    return None


def dlq_records(topic: str, count: int = 1) -> None:
    """``count`` records were delivered to the dead-letter topic ``topic``."""
    if STATE.enabled:
        prometheus().dlq.labels(STATE.flow, topic).inc(count)


# ------------------------------------------------------------------ hooks for other modules
def transaction(outcome: str) -> None:
    """A Kafka producer transaction ended: ``outcome`` is ``commit`` or ``abort``."""
    if STATE.enabled:
        prometheus().transactions.labels(STATE.flow, outcome).inc()


def commit_latency(seconds: float, ok: bool = True) -> None:
    """An offset commit took ``seconds`` from request to the broker's answer."""
    if STATE.enabled:
        prom = prometheus()
        prom.commit_seconds.labels(STATE.flow).observe(seconds)
        prom.commits.labels(STATE.flow, "ok" if ok else "error").inc()


_COMMITS_SENT: dict[str, float] = {}


def commit_sent(key: str) -> None:
    """An asynchronous offset commit for ``key`` (e.g. ``"topic/partition"``) was requested;
    :func:`commit_answered` with the same key, from the commit callback, observes it."""
    if STATE.enabled:
        _COMMITS_SENT[key] = time.monotonic()


def commit_answered(key: str, ok: bool = True) -> None:
    """The broker answered the commit requested last for ``key``."""
    sent = _COMMITS_SENT.pop(key, None) if STATE.enabled else None
    if sent is not None:
        commit_latency(time.monotonic() - sent, ok)


def batch_size(count: int) -> None:
    """An execute step was handed ``count`` records at once."""
    if STATE.enabled:
        with FAST.lock:
            FAST.observe(BATCH_RECORDS, (STATE.flow, "step"), count)


# ------------------------------------------------------------------ librdkafka statistics
def stats_interval_ms() -> int:
    return STATE.stats_ms


def kafka_stats(raw: str) -> None:
    """``stats_cb`` of every client: consumer lag and fetched partitions (thread-safe; any
    error is swallowed: statistics must never disturb a client)."""
    try:
        stats = json.loads(raw)
        if stats.get("type") != "consumer":
            return
        now = time.monotonic()
        if (stats.get("cgrp") or {}).get("state") == "up":
            STATE.group_up = now
        lags: dict[tuple[str, int], tuple[int, float]] = {}
        fetching: dict[tuple[str, int], float] = {}
        for topic, tstats in (stats.get("topics") or {}).items():
            for part, pstats in (tstats.get("partitions") or {}).items():
                partition = int(part)
                if partition < 0 or pstats.get("fetch_state") in (None, "none", "stopped"):
                    continue
                key = (topic, partition)
                if pstats.get("fetch_state") == "active":
                    fetching[key] = now
                lag = pstats.get("consumer_lag")
                if isinstance(lag, int) and lag >= 0:
                    lags[key] = (lag, now)
        if lags or fetching:
            with STATE.lock:
                STATE.lag.update(lags)
                STATE.fetching.update(fetching)
    except Exception:
        LOG.debug("cannot read librdkafka statistics", exc_info=True)


def _fresh(seen: float, now: float) -> bool:
    return now - seen <= STALE_INTERVALS * STATE.stats_ms / 1000 + 1


def trigger_topic(topic: str) -> bool:
    """Whether ``topic`` is one the flow's trigger reads."""
    if STATE.pattern is not None:
        return STATE.pattern.fullmatch(topic) is not None
    return topic in STATE.topics


def group_up() -> bool:
    """Whether a consumer of this process reported its group session up recently."""
    seen = STATE.group_up
    return seen is not None and _fresh(seen, time.monotonic())


def fetching_partitions() -> list[tuple[str, int]]:
    """The trigger's partitions a consumer of this process reported fetching recently."""
    now = time.monotonic()
    with STATE.lock:
        return sorted(k for k, seen in STATE.fetching.items()
                      if _fresh(seen, now) and trigger_topic(k[0]))


class _FastCollector:
    def collect(self) -> Iterator[Any]:
        return FAST.collect()


class _KafkaCollector:
    """Consumer lag (from statistics) and share-group acks, read at scrape time."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        now = time.monotonic()
        lag = GaugeMetricFamily("waxflow_consumer_lag", "Records after the group's committed "
                                "offset, per partition (librdkafka statistics: high "
                                "watermark, or last stable offset under read_committed, "
                                "minus the committed offset)",
                                labels=["flow", "topic", "partition"])
        with STATE.lock:
            for key in [k for k, (_lag, seen) in STATE.lag.items() if not _fresh(seen, now)]:
                del STATE.lag[key]
            lags = sorted(STATE.lag.items())
        for (topic, partition), (value, _seen) in lags:
            lag.add_metric([STATE.flow, topic, str(partition)], value)
        yield lag
        acks = CounterMetricFamily("waxflow_share_acks", "Share-group acknowledgements sent, "
                                   "by type (ACCEPT, RELEASE, REJECT)", labels=["flow", "type"])
        errors = CounterMetricFamily("waxflow_share_ack_errors", "Share-group acknowledgements "
                                     "that failed", labels=["flow"])
        share = sys.modules.get("waxflow.connectors.kafka_share")
        counts: dict[str, int] = {}
        failed = 0
        if share is not None:
            stats = share.STATS
            with stats._lock:
                counts, failed = dict(stats.acks), int(stats.ack_errors)
        for ack in ("ACCEPT", "RELEASE", "REJECT"):
            acks.add_metric([STATE.flow, ack], counts.get(ack, 0))
        errors.add_metric([STATE.flow], failed)
        yield acks
        yield errors


def snapshot() -> dict[str, float]:
    """Every sample as ``name{labels}`` -> value (tests and debugging)."""
    out: dict[str, float] = {}
    for family in prometheus().registry.collect():
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            if not math.isnan(s.value):
                out[f"{s.name}{{{labels}}}"] = s.value
    return out
