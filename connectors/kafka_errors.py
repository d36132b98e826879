"""Authentication and authorisation failures against a secured cluster, as one-line errors.

librdkafka does not fail a request whose connection cannot authenticate: a wrong SASL
password shows up only in the ``error_cb`` (``_AUTHENTICATION``) while every request waits
for its timeout, and a missing ACL surfaces as a per-partition fetch error, a group request
that times out, or a metadata entry that looks like a missing topic. So a job would hang, or
stop minutes later with a message that does not say why. :func:`check_access` asks the
cluster up front, once per process and client identity, whether this principal can connect,
DESCRIBE/READ (or WRITE) the topics and READ the group, and raises :class:`KafkaAccessError`
naming the principal and the resource within seconds. :func:`raise_if_access` turns an
authorisation error met later (a fetch, a commit) into the same error.

Messages never hold a password: the client's ``sasl.password`` and every registered secret
are masked (:func:`waxflow.expressions.mask`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AclOperation, AdminClient  # type: ignore[attr-defined]

from waxflow.errors import WaxflowError
from waxflow.expressions import mask

__all__ = ["AUTHENTICATION", "AUTHORIZATION", "KafkaAccessError", "check_access",
           "principal", "raise_if_access"]

#: the client could not prove who it is (wrong password, unknown user, TLS handshake refused)
AUTHENTICATION = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                            KafkaError._SSL})
#: the broker knows who it is and an ACL says no
AUTHORIZATION = frozenset({
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
})
_RESOURCE = {KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
             KafkaError.GROUP_AUTHORIZATION_FAILED: "group",
             KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
             KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id"}
#: client settings an admin probe keeps (connection and security only)
_CLIENT_KEYS = ("bootstrap.servers", "security.protocol", "sasl.", "ssl.", "client.dns",
                "socket.", "broker.address.family", "enable.ssl", "client.id")
#: the probe's own client log: what it finds is reported as one error, not as log lines
_PROBE_LOG = logging.getLogger("waxflow.kafka.probe")
_PROBE_LOG.propagate = False
_PROBE_LOG.addHandler(logging.NullHandler())


class KafkaAccessError(WaxflowError, PermissionError):
    """The cluster refused this client's identity or an ACL refused an operation."""


def principal(conf: Mapping[str, Any]) -> str:
    """The principal the broker sees for these settings, as its ACLs name it."""
    protocol = str(conf.get("security.protocol", "plaintext")).upper()
    if protocol.startswith("SASL"):
        mechanism = str(conf.get("sasl.mechanism", conf.get("sasl.mechanisms", "GSSAPI")))
        user = conf.get("sasl.username")
        return f"User:{user} ({mechanism})" if user else f"the {mechanism} principal"
    if protocol == "SSL":
        return "the TLS client certificate's principal"
    return "User:ANONYMOUS"


def _where(conf: Mapping[str, Any]) -> str:
    return str(conf.get("bootstrap.servers", "?"))


def _mask(conf: Mapping[str, Any], text: str) -> str:
    return mask(text, [conf.get("sasl.password"), conf.get("ssl.key.password")])


def authentication_error(conf: Mapping[str, Any], err: KafkaError, what: str) -> KafkaAccessError:
    if err.code() == KafkaError._SSL:
        return KafkaAccessError(_mask(conf, (
            f"{what}: the TLS handshake with Kafka at {_where(conf)} failed for "
            f"{principal(conf)}: {err.str()} (check ssl.ca.location in the properties)")))
    return KafkaAccessError(_mask(conf, (
        f"{what}: Kafka at {_where(conf)} refused the credentials of {principal(conf)}: "
        f"{err.str()} (check sasl.username and sasl.password in the properties)")))


def authorization_error(conf: Mapping[str, Any], operation: str, kind: str, name: str,
                        what: str) -> KafkaAccessError:
    return KafkaAccessError(_mask(conf, (
        f"{what}: {principal(conf)} is not authorized to {operation} {kind} {name} on "
        f"{_where(conf)} (missing ACL: grant it ALLOW {operation} on {kind} {name})")))


def raise_if_access(err: KafkaError | None, conf: Mapping[str, Any], what: str, *,
                    name: str = "", operation: str = "READ") -> None:
    """Raise :class:`KafkaAccessError` when ``err`` is an authentication or authorisation
    error (``name``: the topic or group the failed request was about)."""
    if err is None:
        return
    code = err.code()
    if code in AUTHENTICATION:
        raise authentication_error(conf, err, what)
    if code in AUTHORIZATION:
        kind = _RESOURCE.get(code, "resource")
        raise authorization_error(conf, operation, kind, name if kind != "cluster" else "",
                                  what)


_CHECKED: set[tuple[Any, ...]] = set()
_CHECKED_LOCK = threading.Lock()


def check_access(conf: Mapping[str, Any], what: str, *, read: Iterable[str] = (),
                 write: Iterable[str] = (), group: str | None = None,
                 timeout: float = 10.0) -> None:
    """Fail fast, with one line naming the principal and resource, when these settings
    cannot authenticate, or may not READ the ``read`` topics, WRITE the ``write`` topics
    (topics that do not exist yet are skipped: creating them is checked by the broker) or
    READ ``group``. Within ``timeout`` an unreachable cluster is not an error here (the
    caller's own outage handling applies). Each distinct check runs once per process."""
    read, write = tuple(read), tuple(write)
    key = (_where(conf), conf.get("security.protocol"), conf.get("sasl.username"),
           conf.get("sasl.password"), read, write, group)
    with _CHECKED_LOCK:
        if key in _CHECKED:
            return
    auth_failures: list[KafkaError] = []

    def on_error(err: KafkaError) -> None:
        if err.code() in AUTHENTICATION:
            auth_failures.append(err)

    probe: dict[str, Any] = {k: v for k, v in conf.items() if k.startswith(_CLIENT_KEYS)}
    probe.update({"error_cb": on_error, "logger": _PROBE_LOG})
    admin = AdminClient(probe)
    if not _connect(admin, conf, what, auth_failures, timeout):
        return  # unreachable: nothing to say about credentials or ACLs yet
    topics = tuple(dict.fromkeys((*read, *write)))
    if topics:
        futures = admin.describe_topics(TopicCollection(list(topics)),
                                        include_authorized_operations=True)
        for name, fut in futures.items():
            try:
                ops = fut.result().authorized_operations
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    raise authorization_error(conf, "DESCRIBE", "topic", name, what) from None
                continue  # does not exist (yet): the caller reports or creates it
            for op in (("READ",) if name in read else ()) + (("WRITE",) if name in write
                                                             else ()):
                if ops and not _allows(ops, op):  # None/empty: the broker did not say
                    raise authorization_error(conf, op, "topic", name, what)
    if group is not None:
        _check_group(admin, conf, group, what)
    with _CHECKED_LOCK:
        _CHECKED.add(key)


def _connect(admin: AdminClient, conf: Mapping[str, Any], what: str,
             auth_failures: list[KafkaError], timeout: float) -> bool:
    """Whether the cluster answered; raises as soon as an authentication failure shows."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return True
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            if auth_failures:
                raise authentication_error(conf, auth_failures[0], what) from None
            if exc.args[0].code() in AUTHENTICATION:
                raise authentication_error(conf, exc.args[0], what) from None
            if time.monotonic() >= deadline:
                return False


def _allows(ops: Iterable[Any], op: str) -> bool:
    names = {getattr(o, "name", str(o)) for o in ops}
    return op in names or "ALL" in names


def _check_group(admin: AdminClient, conf: Mapping[str, Any], group: str, what: str) -> None:
    fut = admin.describe_consumer_groups([group], include_authorized_operations=True)[group]
    try:
        desc = fut.result()
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
            raise authorization_error(conf, "DESCRIBE", "group", group, what) from None
        return  # a share group, or not there yet: the broker checks READ when it joins
    ops = getattr(desc, "authorized_operations", None)
    if ops and not _allows(ops, AclOperation.READ.name):
        raise authorization_error(conf, "READ", "group", group, what)
