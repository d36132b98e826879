"""A clean stop on SIGTERM/SIGINT: finish what is in flight, commit it, exit 0.

:func:`install` replaces the default handlers in the process that runs the dataflow. The
first signal only sets a flag (Bytewax keeps running): the sources stop reading, let the
epochs in flight finish (an execution is done inside its execute step) and stop once the
offsets of everything they emitted are committed (share sources once every delivery is
acked) — the same condition as ``--stop-when-idle``. The dataflow then ends normally.
A second signal exits at once (code 128 + signal); so does the stop taking longer than
the grace period (``WAXFLOW_SHUTDOWN_TIMEOUT``, default 30 s; code 1): work not committed by
then is replayed by the next run under the same execution ids.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
from types import FrameType

_requested: str | None = None
_done = 0
_lock = threading.Lock()
_stderr_fd = 2  # where the stop messages go (the real stderr, see direct_stderr)


def direct_stderr(fd: int) -> None:
    """Write the stop messages straight to ``fd``: fd 2 may be a pipe that a thread filters
    (the runner's panic filter), and ``os._exit`` would cut that thread short."""
    global _stderr_fd
    _stderr_fd = fd


def _say(message: str) -> None:
    os.write(_stderr_fd, f"waxflow: {message}\n".encode())

DEFAULT_TIMEOUT = 30.0


def requested() -> str | None:
    """The name of the signal that asked the job to stop, or None."""
    return _requested


def add_done(count: int) -> None:
    """Count executions that are done (for the stop message)."""
    global _done
    with _lock:
        _done += count


def done_count() -> int:
    return _done


def _exit_now(code: int, message: str) -> None:
    try:
        _say(message)
    finally:
        os._exit(code)


def _handle(signum: int, _frame: FrameType | None) -> None:
    global _requested
    name = signal.Signals(signum).name
    if _requested is not None:
        _exit_now(128 + signum, f"second {name}: exiting at once; work not committed will "
                                "replay on the next start")
    _requested = name
    try:
        timeout = float(os.environ.get("WAXFLOW_SHUTDOWN_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        timeout = DEFAULT_TIMEOUT
    _say(f"{name} received: finishing in-flight executions and committing (at most "
         f"{timeout:g}s; a second signal exits at once)")
    timer = threading.Timer(timeout, _exit_now, (1, f"stop after {name} took longer than "
                                                    f"{timeout:g}s; exiting: work not "
                                                    "committed will replay on the next start"))
    timer.daemon = True
    timer.start()


def install() -> None:
    """Handle SIGTERM and SIGINT as a clean stop (call from the main thread); SIGUSR2 prints
    every thread's Python stack to stderr and the job goes on (what to send a job that
    looks stuck, like a JVM's ``kill -3``)."""
    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)
    faulthandler.register(signal.SIGUSR2, all_threads=True, chain=False)
