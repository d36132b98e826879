"""The execution index behind the server, and the thread that keeps it in sync.

Other processes (``waxflow executions``) may open the same index file between the server's
operations, so every query and every sync opens the index for itself and closes it after.
One daemon thread syncs (one sync at a time, each bounded by ``sync_timeout``, so a long
first sync is done in slices and the file is released between them); queries run on a small
pool of their own threads meanwhile, each on its own :class:`ExecutionIndex` (DuckDB serves
them from the same database while a sync writes: each reads the last committed batch).
While the index is behind the log (the last slice ended before the end offsets), slices last
``backlog_timeout`` instead: a large backlog is read by a reader process
(:mod:`waxflow.recovery.index_reader`), whose start (0.3-0.5 s) a 2 s slice would pay again
and again; once caught up, slices are short again (new documents arrive a few at a time).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from waxflow.errors import WaxflowError
from waxflow.recovery.index import ExecutionIndex, IndexAccessError, IndexBusyError
from waxflow.server.history_client import HistoryClient, explain_refusal

_T = TypeVar("_T")


@dataclass
class SyncStatus:
    """What the last syncs did: for the pages' header and ``/api/status``."""

    bootstrap: str
    topic: str
    documents: int = 0
    syncs: int = 0
    last_sync: str | None = None
    caught_up: bool = False
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def document(self) -> dict[str, Any]:
        with self.lock:
            return {"bootstrap": self.bootstrap, "topic": self.topic,
                    "documents": self.documents, "syncs": self.syncs,
                    "lastSync": self.last_sync, "caughtUp": self.caught_up,
                    "error": self.error}


class IndexUnavailable(WaxflowError, RuntimeError):
    """The index file cannot be opened or read right now; one line for the page."""


def _line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


class IndexWorker:
    """Runs queries on the index (:meth:`call`) and keeps it in sync from the log topic.

    With ``sync=False`` the index is never synced (answers from the file as it is).
    ``client``: the Kafka client settings under the index's consumers (a secured cluster's,
    see :mod:`.history_client`); when the cluster refuses them, :attr:`status` says why in
    one line naming the principal and the topic (never the password).
    """

    def __init__(self, path: str | Path | None, *, bootstrap: str, topic: str,
                 client: Mapping[str, Any] | None = None, interval: float = 1.0,
                 sync_timeout: float = 2.0, backlog_timeout: float = 8.0, sync: bool = True,
                 query_threads: int = 4) -> None:
        self.status = SyncStatus(bootstrap=bootstrap, topic=topic)
        self._path = path
        self._client = HistoryClient(bootstrap, dict(client or {}))
        self._refusal: tuple[str, str] | None = None  # (the index's message, the line shown)
        self._interval = interval
        self._sync_timeout = sync_timeout
        # never shorter than a caught-up slice; well under the 30 s another process's
        # ExecutionIndex waits for the file
        self._backlog_timeout = max(sync_timeout, backlog_timeout)
        self._queries = ThreadPoolExecutor(max_workers=query_threads,
                                           thread_name_prefix="waxflow-query")
        self._sync_lock = threading.Lock()  # one sync at a time
        self.call(lambda _index: None)  # the file can be opened (and is migrated) at start
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if sync:
            self._syncer = threading.Thread(target=self._loop, name="waxflow-index-sync",
                                            daemon=True)
            self._syncer.start()

    def _open(self) -> ExecutionIndex:
        return ExecutionIndex(self._path, bootstrap=self.status.bootstrap,
                              client=self._client.conf)

    def call(self, query: Callable[[ExecutionIndex], _T], timeout: float = 60.0) -> _T:
        """Run ``query(index)`` on a query thread and return its result. Errors of the
        query's own (LookupError, ValueError, WaxflowError) pass through; a file that is busy
        or cannot be opened or read is :class:`IndexUnavailable`."""
        def run() -> _T:
            try:
                with self._open() as index:
                    return query(index)
            except IndexBusyError as exc:
                raise IndexUnavailable(_line(exc)) from exc
            except (LookupError, ValueError, WaxflowError):
                raise
            except Exception as exc:
                raise IndexUnavailable(f"execution index {self._path or 'default'}: "
                                       f"{_line(exc)}") from exc
        return self._queries.submit(run).result(timeout)

    def sync_now(self, *, timeout: float | None = None) -> None:
        """One sync slice of ``timeout`` seconds (default ``sync_timeout``), now (after a
        sync under way); errors are kept in :attr:`status`, not raised."""
        with self._sync_lock:
            try:
                with self._open() as index:
                    count = index.sync(self.status.bootstrap, self.status.topic,
                                       timeout=timeout or self._sync_timeout)
                    complete = bool(index.last_sync_complete)
            except IndexAccessError as exc:  # who was refused what, asked once per message
                if self._refusal is None or self._refusal[0] != str(exc):
                    self._refusal = (str(exc), explain_refusal(self._client, exc))
                with self.status.lock:
                    self.status.error = self._refusal[1]
                return
            except Exception as exc:  # one line for the page header; the loop goes on
                with self.status.lock:
                    self.status.error = _line(exc)
                return
        with self.status.lock:
            self.status.documents += count
            self.status.syncs += 1
            self.status.last_sync = datetime.now(UTC).isoformat()
            self.status.caught_up = complete
            self.status.error = None

    def _loop(self) -> None:
        more = False
        while not self._stop.is_set():
            started = time.monotonic()
            self.sync_now(timeout=self._backlog_timeout if more else self._sync_timeout)
            with self.status.lock:
                more = self.status.error is None and not self.status.caught_up
            if not more:  # behind without errors: the next (longer) slice at once
                self._stop.wait(max(0.0, self._interval - (time.monotonic() - started)))

    def close(self) -> None:
        """Stop syncing; wait for the operations under way."""
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(timeout=self._backlog_timeout + 30)
        self._queries.shutdown(wait=True)
