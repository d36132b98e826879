"""Query parameters shared by the pages and the JSON API, checked once.

Bad input is a :class:`BadRequest` with one line naming the parameter; pages show it, the API
answers 400 with ``{"error": ...}``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from waxflow.errors import WaxflowError
from waxflow.recovery.executions_cli import parse_when

STATES = ("CREATED", "RUNNING", "RETRYING", "SUCCESS", "WARNING", "FAILED", "SKIPPED")
LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")
MAX_LIMIT = 500


class BadRequest(WaxflowError, ValueError):
    """A query parameter the server cannot use; the message names it."""


@dataclass(frozen=True)
class ExecutionFilter:
    """The executions list's filters; empty strings mean "any"."""

    flow: str = ""
    state: str = ""
    topic: str = ""
    since: str = ""
    until: str = ""
    text: str = ""

    def query(self) -> dict[str, Any]:
        """Keyword arguments for the index's ``list``/``count`` (None for "any")."""
        return {"flow": self.flow or None, "state": self.state or None,
                "topic": self.topic or None, "since": _when("since", self.since),
                "until": _when("until", self.until), "text": self.text or None}

    def params(self) -> dict[str, str]:
        """The non-empty filters, for links that keep them."""
        return {k: v for k, v in vars(self).items() if v}


def _when(name: str, text: str) -> datetime | None:
    if not text:
        return None
    try:
        return parse_when(text)
    except argparse.ArgumentTypeError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def execution_filter(params: Mapping[str, str]) -> ExecutionFilter:
    """The filters in ``params`` (``flow``, ``state``, ``topic``, ``since``, ``until``,
    ``q``), checked: a state must be known, times parse (ISO or ``1h``/``30m``/``2d``)."""
    state = params.get("state", "").strip().upper()
    if state and state not in STATES:
        raise BadRequest(f"state: expected one of {', '.join(STATES)}, got {state!r}")
    found = ExecutionFilter(flow=params.get("flow", "").strip(), state=state,
                            topic=params.get("topic", "").strip(),
                            since=params.get("since", "").strip(),
                            until=params.get("until", "").strip(),
                            text=params.get("q", "").strip())
    found.query()  # the times parse
    return found


def whole(params: Mapping[str, str], name: str, default: int, *, low: int = 0,
          high: int | None = None) -> int:
    """Integer parameter ``name`` in [low, high] (``default`` when absent)."""
    text = params.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name}: expected a whole number, got {text!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"{name}: expected a number {bound}, got {value}")
    return value


def level(params: Mapping[str, str]) -> str:
    """The lowest log level to show (``level``), default TRACE (everything)."""
    value = params.get("level", "").strip().upper() or "TRACE"
    if value not in LEVELS:
        raise BadRequest(f"level: expected one of {', '.join(LEVELS)}, got {value!r}")
    return value
