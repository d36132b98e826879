"""User-facing errors about flow files.

Every mistake a user can make in a flow file is reported as a :class:`FlowError` holding one
or more :class:`Problem` objects. Each problem names the file, the position (when known), the
field (as a path such as ``tasks[1].retry.interval``) and what was expected. The CLI prints
``str(error)`` and exits with status 1; users never see a Python traceback for these.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

__all__ = ["FlowError", "Problem", "format_path"]

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


class FlowError(Exception):
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
