"""One running instance per flow and consumer group, held as a Kafka group membership.

waxflow assigns Kafka partitions to Bytewax workers by hand, so the consumer group itself
never notices a second ``waxflow run`` of the same flow: both would process every record.
This lock makes that impossible. The instance (process 0 of a cluster, or the parent of
``waxflow run --processes N``, which holds it for its children) joins the group
``<groupId>.waxflow-instance`` on the one-partition topic ``waxflow.instances`` with the
cooperative-sticky assignor: exactly one member of that group owns the partition.

- The first instance gets the partition and keeps it (a background thread polls, so the
  membership lives as long as the process; a clean exit leaves the group at once).
- A second instance joins, the group rebalances, the partition stays with its owner
  (sticky), the newcomer's assignment is empty: it refuses to start with one line naming
  the holder (client id and host, from the group description).
- A holder that died (SIGKILL, lost host) is evicted when its session times out
  (``SESSION_MS``, 6 s): the newcomer's first assignment then holds the partition, so a
  restart after a crash waits at most that long.
- An instance whose membership ends while running (its session expired: the broker went
  away, or a network partition longer than the session timeout) re-joins when it can; it
  stops at its next read (:func:`check`) only if another member holds the partition by then
  (another instance started meanwhile). During the gap a newly started instance could run
  beside it: it cannot commit while cut off, so the newcomer replays its work under the
  same execution ids.

Share groups need no lock: a share group hands each record to one member by design.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from waxflow.connectors.deliveries import OUTAGE, give_up_seconds, is_outage
from waxflow.connectors.kafka_config import KAFKA_LOG
from waxflow.connectors.kafka_errors import check_access, raise_if_access
from waxflow.errors import WaxflowError

LOG = logging.getLogger("waxflow.instance")

LOCK_TOPIC = "waxflow.instances"
SESSION_MS = 6000
#: set in the environment of processes whose parent holds the lock for them
HELD_ENV = "WAXFLOW_INSTANCE_LOCK_HELD"

_CLIENT_KEYS = ("bootstrap.servers", "security.protocol", "sasl.", "ssl.", "client.dns",
                "socket.", "broker.address.family", "enable.ssl.")


class InstanceConflict(WaxflowError):
    """Another instance of the flow holds the lock."""


class InstanceLock:
    """Membership of the lock group; :meth:`acquire` returns once this instance owns it."""

    def __init__(self, conf: dict[str, Any], group_id: str, what: str) -> None:
        self.what = what
        self.group = f"{group_id}.waxflow-instance"
        self._client = {k: v for k, v in conf.items() if k.startswith(_CLIENT_KEYS)}
        self._assigned: list[TopicPartition] | None = None
        self._owned = False
        self._away = False  # the membership was lost and is not back yet
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    def _on_assign(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        self._assigned = list(parts)
        if parts:
            if self._away:
                LOG.warning("%s: instance lock held again (group %s)", self.what, self.group)
                OUTAGE.up()
            self._owned, self._away = True, False
        elif self._away:
            # back after losing the membership, and another member holds the partition:
            # another instance started meanwhile
            self.lost = True
            LOG.error("%s: another instance took the instance lock (group %s) while this "
                      "one was cut off; stopping", self.what, self.group)

    def _on_revoke(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        if self._stop.is_set():  # leaving on purpose (release)
            return
        if parts and self._owned:
            # the session ended, most often because the broker went away: this instance
            # re-joins when it can and stops only if another member got the partition
            self._owned, self._away = False, True
            LOG.warning("%s: instance lock membership lost (group %s; broker unreachable?); "
                        "re-joining", self.what, self.group)
            # a job still starting sees an outage only here: note it like every client
            OUTAGE.down("instance lock", "group session ended")

    def _ensure_topic(self) -> None:
        """Create the lock topic if missing; a broker that is away or still starting (no
        controller yet) is waited for, up to ``$WAXFLOW_BROKER_GIVE_UP``."""
        admin = AdminClient(self._client)
        deadline = time.monotonic() + give_up_seconds()
        while True:
            futures = admin.create_topics([NewTopic(LOCK_TOPIC, 1, -1)], request_timeout=15)
            try:
                futures[LOCK_TOPIC].result(timeout=20)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if "TOPIC_ALREADY_EXISTS" in err.name():
                    return
                raise_if_access(err, self._client, f"{self.what}: instance lock",
                                name=LOCK_TOPIC, operation="CREATE")
                if not is_outage(err) or time.monotonic() > deadline:
                    raise InstanceConflict(f"{self.what}: cannot create the instance-lock "
                                           f"topic {LOCK_TOPIC}: {err.str()}") from None
                OUTAGE.down("instance lock", err.str())
                time.sleep(1.0)

    def acquire(self, timeout: float = 60.0) -> None:
        """Join the lock group; return when this instance owns the partition, raise
        InstanceConflict when another live instance does (KafkaAccessError, within seconds,
        when the credentials or ACLs do not let it in)."""
        check_access(self._client, f"{self.what}: instance lock", read=[LOCK_TOPIC],
                     group=self.group)
        self._ensure_topic()
        consumer = Consumer({
            **self._client, "group.id": self.group,
            "client.id": f"waxflow-{socket.gethostname()}-{os.getpid()}",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 1000,
            "enable.auto.commit": False, "auto.offset.reset": "latest",
            "logger": KAFKA_LOG,  # librdkafka's lines, repeats summarised (an outage)
        })
        consumer.subscribe([LOCK_TOPIC], on_assign=self._on_assign,
                           on_revoke=self._on_revoke, on_lost=self._on_revoke)
        self._consumer = consumer
        deadline = time.monotonic() + timeout + SESSION_MS / 1000
        refused_since: float | None = None
        holders_dead = False
        while not self._owned:
            consumer.poll(0.2)
            if self._assigned is not None and not self._owned:
                # another member holds the lock. A killed one (a crash just before this
                # restart) still holds it until its session ends, and the cooperative
                # protocol answers a newcomer at once, with nothing (measured: a restart
                # right after a SIGKILL was refused as "already running"): when every
                # holder is a process of this host that no longer exists, wait out its
                # session; a live holder, or one elsewhere, means a second instance
                now = time.monotonic()
                if refused_since is None:  # asked once: the holders do not come back
                    refused_since, holders_dead = now, self._holders_dead_here()
                if holders_dead and now - refused_since < SESSION_MS / 1000 + 2.0:
                    continue
                holder = self._holder()
                consumer.close()
                raise InstanceConflict(
                    f"{self.what} is already running{holder} (instance lock: consumer group "
                    f"{self.group}); refusing to start a second instance, which would "
                    "process every record again")
            if time.monotonic() > deadline:
                consumer.close()
                raise InstanceConflict(f"{self.what}: could not take the instance lock "
                                       f"(group {self.group}) within {timeout:g}s")
        self._thread = threading.Thread(target=self._keep, name="instance-lock", daemon=True)
        self._thread.start()
        atexit.register(self.release)
        LOG.info("%s: instance lock taken (group %s)", self.what, self.group)

    def _holders_dead_here(self) -> bool:
        """Whether every member holding the lock is a process of this host that has exited
        (its client id is ``waxflow-<host>-<pid>``)."""
        try:
            holders = [client_id for client_id, _host in self._holders()]
        except Exception:  # cannot tell: treat the holder as alive (refuse, as before)
            return False
        prefix = f"waxflow-{socket.gethostname()}-"
        if not holders:
            return True  # nobody holds it any more: the next rebalance gives it to us
        for client_id in holders:
            pid = client_id.removeprefix(prefix)
            if not client_id.startswith(prefix) or not pid.isdigit():
                return False
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                continue  # gone
            except PermissionError:
                return False  # alive (another user's)
            return False  # alive
        return True

    def _holders(self) -> list[tuple[str, str]]:
        """(client id, host) of the other members that hold the lock (asks the broker)."""
        admin = AdminClient(self._client)
        desc = admin.describe_consumer_groups([self.group])[self.group].result(timeout=10)
        me = f"waxflow-{socket.gethostname()}-{os.getpid()}"
        return [(m.client_id, m.host.lstrip("/")) for m in desc.members
                if m.client_id != me and m.assignment.topic_partitions]

    def _holder(self) -> str:
        try:
            others = [f"{client_id} on {host}" for client_id, host in self._holders()]
            return f" ({', '.join(others)})" if others else ""
        except Exception:  # the description is a courtesy; the refusal stands without it
            return ""

    def _keep(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stop.is_set():
            try:
                # (short: release joins this thread, and a stop waits for the poll to end;
                # ten polls a second of a consumer that receives nothing cost next to nothing)
                consumer.poll(0.1)
            except RuntimeError:  # closed meanwhile
                return

    def release(self) -> None:
        """Leave the lock group (the next instance gets the lock at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            with contextlib.suppress(RuntimeError):
                consumer.close()


_HELD: InstanceLock | None = None
#: an acquisition going on in the background (:func:`hold` with ``background``)
_PENDING: _Acquiring | None = None


class _Acquiring(threading.Thread):
    """:meth:`InstanceLock.acquire` on a thread; :func:`check` waits for its outcome."""

    def __init__(self, lock: InstanceLock) -> None:
        super().__init__(name="instance-lock-acquire", daemon=True)
        self.lock = lock
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.lock.acquire()
        except BaseException as exc:  # raised where the job waits for the lock (check)
            self.error = exc


def hold(conf: dict[str, Any], group_id: str, what: str, *, background: bool = False
         ) -> None:
    """Take the instance lock for this process (once; a no-op when the parent holds it).
    ``background``: return at once and take it on a thread while the job starts; the first
    :func:`check` (every source calls it before it reads a record) waits for it, and
    raises its InstanceConflict. For jobs whose sources all call :func:`check` before
    anything they do could disturb a running instance (measured: the lock takes ~0.3 s
    of a ~1.1 s start; the dataflow's start runs beside it)."""
    global _HELD, _PENDING
    if _HELD is not None or _PENDING is not None or os.environ.get(HELD_ENV) == "1":
        return
    lock = InstanceLock(conf, group_id, what)
    if background:
        _PENDING = _Acquiring(lock)
        _PENDING.start()
        return
    lock.acquire()
    _HELD = lock


def _wait_pending() -> None:
    """Wait for a background acquisition to end; raise what it raised."""
    global _HELD, _PENDING
    pending = _PENDING
    if pending is None:
        return
    pending.join()
    if pending.error is not None:
        raise pending.error
    _HELD, _PENDING = pending.lock, None


def check(where: str) -> None:
    """Raise InstanceConflict when this process held the lock and lost it (sources call it
    before they read or commit); first wait for a lock still being taken
    (:func:`hold` ``background``) and raise why it could not be."""
    if _PENDING is not None:
        _wait_pending()
    if _HELD is not None and _HELD.lost:
        raise InstanceConflict(f"{_HELD.what}: lost the instance lock while running ({where}); "
                               "another instance may have started: stopping without "
                               "committing more")
