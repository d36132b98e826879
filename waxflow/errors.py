"""The errors a user reads: one base, :class:`WaxflowError`, and its job-stopping kinds.

A ``WaxflowError`` carries a message meant for the user (what is wrong, and where: the
file:line, the record's topic/partition@offset or the setting); the CLI prints it on one line
without a traceback and exits 1. Anything else that stops a job is a bug or a failure of the
world and is reported as such.

Every mistake a user can make in a flow file is reported as a :class:`FlowError` holding one
or more :class:`Problem` objects. Each problem names the file, the position (when known), the
field (as a path such as ``tasks[1].retry.interval``) and what was expected. The CLI prints
``str(error)`` and exits with status 1; users never see a Python traceback for these.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "ConfigConflict",
    "DeliveryError",
    "FlowError",
    "FlowStopped",
    "Problem",
    "SerdeStop",
    "SourceStop",
    "TransactionError",
    "WaxflowError",
    "format_path",
    "user_message",
]



class WaxflowError(Exception):
    """Base of every error meant for the user; ``str()`` is the whole message."""


class FlowStopped(WaxflowError):
    """onFailure STOP: an execution failed; the job halts without committing its record."""


class SerdeStop(WaxflowError):
    """onSerdeError FAIL: the job stops at this record without committing it."""


class SourceStop(WaxflowError):
    """The source cannot go on (fatal consumer error); the message names the partition."""


class DeliveryError(WaxflowError, RuntimeError):
    """The broker did not acknowledge a record; the work that sent it is not done."""


class ConfigConflict(WaxflowError, ValueError):
    """A user property contradicts what a guarantee needs."""


class TransactionError(WaxflowError, RuntimeError):
    """A batch's transaction could not commit; it was aborted and the batch will replay."""


def _kinds(cls: type[WaxflowError] = WaxflowError) -> list[str]:
    names = [cls.__name__]
    for sub in cls.__subclasses__():
        names += _kinds(sub)
    return names


def user_message(exc: BaseException, also: tuple[type[BaseException], ...] = ()
                 ) -> str | None:
    """The message of the first :class:`WaxflowError` (or instance of one of ``also``, e.g.
    a Kafka client error) in ``exc``'s cause/context chain.

    Bytewax re-raises an exception from a step as its own error, sometimes with the original
    only in the text (``"... FlowStopped: message"``): then the text after the first known
    kind's name is the message. None when no user-facing error is found.
    """
    kinds: tuple[type[BaseException], ...] = (WaxflowError, *also)
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, kinds):
            return str(cur)
        cur = cur.__cause__ or cur.__context__
    text = str(exc)
    for name in [*_kinds(), *(k.__name__ for k in also)]:
        marker = f"{name}: "
        if marker in text:
            return text.split(marker, 1)[1].splitlines()[0]
    return None


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


def format_path(path: Sequence[Hashable]) -> str:
    """Render a path of mapping keys and list indices as ``tasks[1].retry.interval``.

    Guarantees: integers render as ``[i]``; identifier-like keys join with dots; any other key
    (containing dots, spaces, ...) renders quoted in brackets, e.g. ``properties["a.b"]``, so
    the result is unambiguous. The empty path renders as ``""``.
    """
    out: list[str] = []
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out.append(f"[{part}]")
        elif isinstance(part, str) and _PLAIN_KEY.match(part):
            out.append(f".{part}" if out else part)
        else:
            text = part if isinstance(part, str) else str(part)
            out.append('["' + text.replace("\\", "\\\\").replace('"', '\\"') + '"]')
    return "".join(out)


@dataclass(frozen=True)
class Problem:
    """One mistake in a flow file.

    ``line`` and ``column`` are 1-based, or None when unknown. ``field`` is a path such as
    ``tasks[1].retry.interval`` ("" when the problem is not about one field).
    """

    file: str
    line: int | None
    column: int | None
    field: str
    message: str

    def __str__(self) -> str:
        """``file:line:col: field: message``; absent parts (and their colon) are omitted."""
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


class FlowError(WaxflowError):
    """A flow file is wrong. Holds every :class:`Problem` found (at least one).

    ``str(error)`` is the problems, one per line, in the order given.
    """

    problems: list[Problem]

    def __init__(self, problems: Problem | Iterable[Problem]) -> None:
        items = [problems] if isinstance(problems, Problem) else list(problems)
        if not items:
            raise ValueError("FlowError needs at least one problem")
        self.problems = items
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)
