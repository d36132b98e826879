"""Consumers during a broker outage: one line when the broker goes, one when it is back, and
a bound on the wait.

Producers already note outages in the process-wide :data:`~waxflow.connectors.deliveries.OUTAGE`
(their ``error_cb`` and failed deliveries). The consumer side (group, batch and share
sources, ``kafka.Consume``) shares that same record, so a job logs one "broker unreachable"
line and one "broker reachable again" line per outage whichever client saw it first, and
honours the same ``$WAXFLOW_BROKER_GIVE_UP`` (default 300 s):

- :func:`watch` gives a client config the ``error_cb`` that notes the broker going away and
  remembers the config for the probe;
- :func:`check`, called by a source on every ``next_batch``, raises :class:`SourceStop` with
  one line once the outage is older than the bound; while an outage is open it runs one
  background probe per process (an AdminClient metadata request every second), which
  closes the outage when the broker answers: a consumer that is only waiting has no request
  of its own that could tell;
- :func:`idle_since` keeps ``--stop-when-idle`` from counting time without a broker;
- :func:`retry` runs a call that fails for want of the broker (a commit) again until it
  succeeds or the bound passes.

Nothing here commits or acks anything: a source that stops at the bound has committed only
what was done, and its restart resumes there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from waxflow.connectors.deliveries import (
    GIVE_UP_ENV,
    OUTAGE,
    client_error,
    give_up_seconds,
    is_outage,
    kafka_error,
)
from waxflow.errors import SourceStop

LOG = logging.getLogger("waxflow.broker")
T = TypeVar("T")

PROBE_EVERY = 1.0  # seconds between probes while the broker is away
#: client settings an AdminClient does not take (consumer-, producer- or group-only)
_ADMIN_SKIP = ("share.", "group.", "max.poll", "fetch.", "isolation.", "auto.offset",
               "enable.auto", "enable.partition", "queued.", "session.timeout",
               "heartbeat.", "partition.assignment", "on_commit", "error_cb", "stats_cb",
               "transaction", "enable.idempotence", "linger.", "acks", "message.timeout",
               "delivery.timeout", "statistics.interval")


def admin_conf(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a client config an AdminClient takes (connection, security, logging)."""
    return {k: v for k, v in conf.items() if not k.startswith(_ADMIN_SKIP)}


class _Watch:
    """The probe's config and thread, and when the last outage ended (process-wide)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conf: dict[str, Any] | None = None
        self.probe: threading.Thread | None = None
        self.outages = 0  # OUTAGE.count when the last outage was seen closed
        self.back_at = 0.0  # monotonic time the last outage was seen closed


_WATCH = _Watch()


def watch(conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` with waxflow's ``error_cb`` (notes the broker going away, once); the first
    config seen is the one the probe connects with."""
    with _WATCH.lock:
        if _WATCH.conf is None:
            _WATCH.conf = admin_conf(conf)
    return {"error_cb": client_error, **conf}


def gone(what: str, reason: str) -> None:
    """Note the broker going away, seen by ``what`` (a failed commit, ack or poll)."""
    OUTAGE.down(what, reason)
    _start_probe()


def check(what: str, conf: Mapping[str, Any] | None = None) -> None:
    """Raise SourceStop once an outage has lasted longer than ``$WAXFLOW_BROKER_GIVE_UP``.

    Cheap (two attribute reads when the broker is there): meant for every ``next_batch``.
    ``conf`` registers the probe's config when :func:`watch` was not used.
    """
    since = OUTAGE.since
    if since is None:
        _note_end()
        return
    if conf is not None and _WATCH.conf is None:
        with _WATCH.lock:
            _WATCH.conf = _WATCH.conf or admin_conf(conf)
    _start_probe()
    waited = time.monotonic() - since
    limit = give_up_seconds()
    if waited > limit:
        raise SourceStop(f"the broker stayed unreachable for {waited:.0f}s (over ${GIVE_UP_ENV}"
                         f"={limit:.0f}s) while {what} waited for it; stopping: nothing "
                         "undone was committed, a restart resumes from the committed offsets")


def idle_since(last_activity: float) -> float:
    """When a source has been idle since, not counting time without a broker: an outage
    (open, or ended after ``last_activity``) restarts the idle clock."""
    if OUTAGE.since is not None:
        return time.monotonic()
    _note_end()
    return max(last_activity, _WATCH.back_at)


def reachable(what: str, timeout: float = 3.0) -> bool:
    """Whether the broker answers a metadata request now. A source about to stop for
    idleness asks: a share consumer that never had a connection reports no outage of its
    own, so time without a broker would pass for idle time. Not reachable: the outage is
    noted (the idle clock restarts, the probe watches for its end)."""
    with _WATCH.lock:
        conf = _WATCH.conf
    if conf is None:
        return True
    settings: dict[str, Any] = {**conf, "error_cb": _quiet,
                                "socket.timeout.ms": int(timeout * 1000)}
    admin = AdminClient(settings)
    try:
        admin.list_topics(timeout=timeout)
        return True
    except KafkaException as exc:
        err = kafka_error(exc)
        gone(what, err.str() if err is not None else str(exc))
        return False


def _note_end() -> None:
    """Remember when an outage was first seen closed (no outage open now)."""
    if OUTAGE.count != _WATCH.outages:
        _WATCH.outages = OUTAGE.count
        _WATCH.back_at = time.monotonic()


def retry(call: Callable[[], T], what: str) -> T:
    """``call()``, again and again while it fails for want of the broker, until it succeeds
    or the outage passes ``$WAXFLOW_BROKER_GIVE_UP`` (then SourceStop). Any other error
    raises at once."""
    while True:
        try:
            result = call()
        except KafkaException as exc:
            err = kafka_error(exc)
            if not is_outage(err):
                raise
            gone(what, err.str() if err is not None else str(exc))
            check(what)
            time.sleep(0.5)
            continue
        OUTAGE.up()
        return result


def _start_probe() -> None:
    with _WATCH.lock:
        if _WATCH.conf is None or (_WATCH.probe is not None and _WATCH.probe.is_alive()):
            return
        _WATCH.probe = threading.Thread(target=_probe, args=(dict(_WATCH.conf),),
                                        name="waxflow-broker-probe", daemon=True)
        _WATCH.probe.start()


def _quiet(_err: object) -> None:
    """The probe's own connection errors: the outage is already logged."""


def _probe(conf: dict[str, Any]) -> None:
    settings: dict[str, Any] = {**conf, "error_cb": _quiet, "socket.timeout.ms": 3000}
    admin = AdminClient(settings)
    while OUTAGE.since is not None:
        try:
            admin.list_topics(timeout=3)
        except KafkaException:
            time.sleep(PROBE_EVERY)
            continue
        OUTAGE.up()
        return
