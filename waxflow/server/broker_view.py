"""What the server reads from the broker itself: a trigger record, a consumer group's lag.

Both are read-only (no group joined, nothing committed) and bounded by a timeout; a failure
is an answer with ``error`` set (one line), never an exception for the page. A cluster that
refuses the client settings (wrong password, missing ACL) is said at once, naming the
principal, never the password. Answers are
cached for a few seconds, so a page that refreshes does not hammer the broker. Text shown
from a record passes through the process's secret redactor and is cut to a preview.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from waxflow.connectors.kafka_errors import KafkaAccessError, raise_if_access
from waxflow.expressions import redact

PREVIEW_CHARS = 4096
CACHE_SECONDS = 5.0
#: a partition whose lag by offsets is at most this many records is counted by reading
#: them (read_committed): exact; a larger one is estimated from its offsets
EXACT_LAG_RECORDS = 10_000
_T = TypeVar("_T")


class _Cache:
    """A small time-bounded memo, thread-safe."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._items: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], _T]) -> _T:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and now - hit[0] < self._seconds:
                value: _T = hit[1]
                return value
        value = make()
        with self._lock:
            if len(self._items) > 256:
                self._items.clear()
            self._items[key] = (time.monotonic(), value)
        return value


_RECORDS = _Cache(60.0)
_LAGS = _Cache(CACHE_SECONDS)


def preview(data: bytes | None, limit: int = PREVIEW_CHARS) -> dict[str, Any] | None:
    """``{"text", "bytes", "cut", "binary"}`` for record bytes; None for a null value.

    UTF-8 text is shown as is (secrets masked), anything else as base64; ``cut`` says the text
    was shortened to ``limit`` characters.
    """
    if data is None:
        return None
    try:
        text, binary = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, binary = base64.b64encode(data).decode("ascii"), True
    text = redact(text)
    return {"text": text[:limit], "bytes": len(data), "cut": len(text) > limit,
            "binary": binary}


class _Refused:
    """A client's ``error_cb``: keeps the first authentication failure (a wrong password
    shows only there, while every request waits for its timeout)."""

    def __init__(self, conf: Mapping[str, Any], what: str) -> None:
        self.conf, self.what = conf, what
        self.error: KafkaError | None = None

    def __call__(self, err: KafkaError) -> None:
        if self.error is None and err.code() in (KafkaError._AUTHENTICATION,
                                                 KafkaError.SASL_AUTHENTICATION_FAILED,
                                                 KafkaError._SSL):
            self.error = err

    def check(self) -> None:
        """Raise :class:`KafkaAccessError` when the cluster refused the credentials."""
        raise_if_access(self.error, self.conf, self.what)


def _client(conf: Mapping[str, Any], timeout: float, refused: _Refused | None = None
            ) -> Consumer:
    own: dict[str, Any] = {"error_cb": refused} if refused is not None else {}
    return Consumer({**conf, "group.id": conf.get("group.id") or
                     f"waxflow-server-{uuid.uuid4().hex}",
                     "enable.auto.commit": False, "enable.partition.eof": True,
                     "socket.timeout.ms": int(timeout * 1000),
                     "socket.connection.setup.timeout.ms": int(timeout * 1000), **own})


def trigger_record(conf: Mapping[str, Any], topic: str, partition: int, offset: int, *,
                   timeout: float = 5.0) -> dict[str, Any]:
    """The record at ``topic/partition@offset``: ``key``, ``value`` (previews), ``headers``
    ({name: preview text}), ``timestamp``; or ``{"error": ...}`` when it cannot be read
    (deleted by retention, broker unreachable)."""
    key = (conf.get("bootstrap.servers"), topic, partition, offset)
    return _RECORDS.get(key, lambda: _read_record(conf, topic, partition, offset, timeout))


def _read_record(conf: Mapping[str, Any], topic: str, partition: int, offset: int,
                 timeout: float) -> dict[str, Any]:
    where = f"record {topic}/{partition}@{offset}"
    refused = _Refused(conf, f"{where} cannot be read")
    consumer = _client(conf, timeout, refused)
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(min(0.5, max(0.05, deadline - time.monotonic())))
            refused.check()
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                    continue  # the throwaway group is never joined (no group ACL needed)
                raise_if_access(err, conf, f"{where} cannot be read", name=topic)
                return {"error": f"{where} cannot be read: {err.str()}"}
            if msg.offset() != offset:
                break
            ts_type, ts = msg.timestamp()
            raw = msg.headers() or []
            pairs = raw.items() if isinstance(raw, dict) else raw
            headers = [(str(k), preview(v.encode() if isinstance(v, str) else v, 512))
                       for k, v in pairs]
            return {"key": preview(msg.key(), 512), "value": preview(msg.value()),
                    "headers": [{"name": redact(k), "value": v} for k, v in headers],
                    "timestamp": ts if ts_type else None}
        return {"error": f"{where} cannot be read (deleted by retention, or not reachable "
                         f"within {timeout:g}s)"}
    except KafkaAccessError as exc:
        return {"error": str(exc)}
    except KafkaException as exc:
        return {"error": f"{where} cannot be read: {exc.args[0].str() if exc.args else exc}"}
    finally:
        consumer.close()


def group_lag(conf: Mapping[str, Any], group: str, topics: list[str], *,
              timeout: float = 5.0) -> dict[str, Any]:
    """The consumer group's lag per partition of ``topics``: ``{"group", "partitions":
    [{"topic", "partition", "committed", "end", "lag", "exact"}], "total", "exact"}``
    (``committed`` None and ``lag`` the whole partition when the group committed nothing);
    ``error`` on failure.

    ``lag`` is the records a read_committed consumer of the group would still deliver, up
    to the end offset read now: transaction markers and aborted records are not work left
    (a group that read everything of a transactional topic has lag 0, not one per marker),
    nor are the records of a transaction still open. It is ``exact`` (counted by reading
    the records) for a partition with at most ``EXACT_LAG_RECORDS`` offsets left; a larger
    one (or one not read within the timeout) is estimated from its offsets, from its first
    readable record after the group's offset to the end less a final commit marker, so it
    may count markers and aborted records in between: ``exact`` False (the total's
    ``exact`` is False when any partition's is; the page shows it as approximate).
    """
    key = (conf.get("bootstrap.servers"), group, tuple(sorted(topics)))
    return _LAGS.get(key, lambda: _read_lag(conf, group, topics, timeout))


def _read_lag(conf: Mapping[str, Any], group: str, topics: list[str],
              timeout: float) -> dict[str, Any]:
    refused = _Refused(conf, f"lag of group {group}")
    consumer = _client({**conf, "group.id": group}, timeout, refused)
    try:
        tps: list[TopicPartition] = []
        meta = _metadata(consumer, timeout, refused)
        for topic in topics:
            t = meta.topics.get(topic)
            if t is None or t.error is not None:
                continue
            tps += [TopicPartition(topic, p) for p in sorted(t.partitions)]
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in consumer.committed(tps, timeout=timeout)} if tps else {}
        rows = []
        for tp in tps:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
            done = committed.get((tp.topic, tp.partition))
            done = done if done is not None and done >= 0 else None
            lag = high - (done if done is not None else low)
            rows.append({"topic": tp.topic, "partition": tp.partition, "committed": done,
                         "end": high, "lag": max(0, lag)})
        for row in rows:
            row["exact"] = row["lag"] == 0
        _count_small(conf, rows, timeout)
        _skip_markers(conf, [r for r in rows if not r["exact"]], timeout)
        return {"group": group, "partitions": rows, "total": sum(r["lag"] for r in rows),
                "exact": all(r["exact"] for r in rows), "error": None}
    except KafkaAccessError as exc:
        return {"group": group, "partitions": [], "total": None, "error": str(exc)}
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        try:
            if isinstance(err, KafkaError):  # committed offsets: DESCRIBE on the group
                name = group if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED else \
                    ", ".join(topics)
                raise_if_access(err, conf, f"lag of group {group}", name=name,
                                operation="DESCRIBE")
        except KafkaAccessError as access:
            return {"group": group, "partitions": [], "total": None, "error": str(access)}
        return {"group": group, "partitions": [], "total": None,
                "error": f"lag of group {group}: {err.str() if err is not None else exc}"}
    finally:
        consumer.close()


def _metadata(consumer: Consumer, timeout: float, refused: _Refused) -> Any:
    """The cluster's metadata, asked in slices of a second: a refused password shows in
    ``error_cb`` within a slice or two (then :class:`KafkaAccessError`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.list_topics(timeout=min(1.0, max(0.05,
                                                             deadline - time.monotonic())))
        except KafkaException:
            consumer.poll(0)  # serves error_cb (nothing is assigned: no message)
            refused.check()
            if time.monotonic() >= deadline:
                raise


def _count_small(conf: Mapping[str, Any], rows: list[dict[str, Any]], timeout: float
                 ) -> None:
    """Set ``lag`` (and ``exact``) of each partition with at most ``EXACT_LAG_RECORDS``
    offsets left to the records a read_committed consumer delivers from the group's offset
    (the log start when none) up to ``end``: the records read, not their offsets."""
    small = {(r["topic"], r["partition"]): r for r in rows
             if 0 < r["lag"] <= EXACT_LAG_RECORDS}
    if not small:
        return
    counts = {key: 0 for key in small}
    done: set[tuple[str, int]] = set()
    consumer = _client({**conf, "isolation.level": "read_committed"}, timeout)
    try:
        consumer.assign([TopicPartition(t, p, r["committed"] if r["committed"] is not None
                                        else -2) for (t, p), r in small.items()])  # -2: earliest
        deadline = time.monotonic() + timeout
        while len(done) < len(small) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, max(0.05, min(0.5, deadline - time.monotonic()))):
                topic, partition = msg.topic(), msg.partition()
                if topic is None or partition is None:
                    continue
                key = (topic, partition)
                if key not in small or key in done:
                    continue
                err, offset = msg.error(), msg.offset()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        return  # an error: the estimates stand
                    done.add(key)  # the last stable offset: nothing more to deliver now
                elif offset is None or offset >= small[key]["end"]:
                    done.add(key)  # past the end read with the lag: not counted
                else:
                    counts[key] += 1
    finally:
        consumer.close()
    for key in done:
        small[key].update(lag=counts[key], exact=True)


def _skip_markers(conf: Mapping[str, Any], rows: list[dict[str, Any]], timeout: float) -> None:
    """Lower each partition's lag to count from its first readable record after the
    committed offset (0 when only markers or aborted records remain) and to leave out a
    transaction marker at its end (the last offset of a transactional partition, once its
    transaction committed): at most two reads of one record per partition."""
    behind = {(r["topic"], r["partition"]): r for r in rows if r["lag"] > 0}
    if not behind:
        return
    first = _first_readable(conf, {key: r["committed"] if r["committed"] is not None else -2
                                   for key, r in behind.items()}, timeout)  # -2: earliest
    for key, offset in first.items():
        row = behind[key]
        row["lag"] = 0 if offset is None else max(0, row["end"] - offset)
    tails = {key: r["end"] - 1 for key, r in behind.items() if r["lag"] > 1}
    for key, offset in _first_readable(conf, tails, timeout).items():
        if offset is None:  # nothing readable at the last offset: a marker
            behind[key]["lag"] -= 1


def _first_readable(conf: Mapping[str, Any], starts: dict[tuple[str, int], int],
                    timeout: float) -> dict[tuple[str, int], int | None]:
    """Per partition, the offset of the first committed record at or after its start
    offset (read_committed), or None when there is none up to the end; partitions not
    answered within ``timeout`` are absent."""
    if not starts:
        return {}
    found: dict[tuple[str, int], int | None] = {}
    consumer = _client({**conf, "isolation.level": "read_committed"}, timeout)
    try:
        consumer.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
        deadline = time.monotonic() + timeout
        while len(found) < len(starts) and time.monotonic() < deadline:
            msg = consumer.poll(max(0.05, deadline - time.monotonic()))
            if msg is None:
                continue
            topic, partition = msg.topic(), msg.partition()
            if topic is None or partition is None:
                continue
            key = (topic, partition)
            if key not in starts or key in found:
                continue
            err, offset = msg.error(), msg.offset()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                found[key] = None
            elif err is None and offset is not None:
                found[key] = offset
            else:
                break  # an error: the plain counts stand
    finally:
        consumer.close()
    return found
