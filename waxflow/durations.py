"""ISO-8601 durations (``PT30S``, ``PT0.5S``, ``PT1M30S``, ``P1D``, ``P1DT2H``, ``P2W``).

The accepted grammar is the part of ISO-8601 with a fixed length, as Java's
``Duration.parse`` (used by Kestra) reads it: weeks, days, hours, minutes and seconds, with a
decimal fraction on seconds only, case-insensitive. Years and months (no fixed length),
negative durations and non-ISO forms such as ``PT100MS`` or ``30s`` are refused with a
``ValueError`` whose message starts ``expected an ISO-8601 duration such as PT30S, got ...``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

__all__ = ["DURATION_PATTERN", "Duration", "format_duration", "parse_duration"]

_D = r"(\d{1,15})"
_GRAMMAR = re.compile(
    rf"P(?:{_D}W)?(?:{_D}D)?(?:T(?:{_D}H)?(?:{_D}M)?(?:{_D}(?:[.,](\d{{1,9}}))?S)?)?",
    re.IGNORECASE,
)
_YEARS_MONTHS = re.compile(r"[-+]?P[^T]*[YM]", re.IGNORECASE)
_FRACTION_NOT_SECONDS = re.compile(r"\d[.,]\d+[WDHM]", re.IGNORECASE)

#: ECMA-262 regular expression (for JSON Schema) matching the upper-case form of the grammar.
DURATION_PATTERN = r"^P(?!$)(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+([.,]\d+)?S)?)?$"


def _error(value: object, reason: str = "") -> ValueError:
    message = f"expected an ISO-8601 duration such as PT30S, got {value!r}"
    return ValueError(f"{message}: {reason}" if reason else message)


def _reason(text: str) -> str:
    if "-" in text:
        return "negative durations are not allowed"
    if _YEARS_MONTHS.match(text):
        return "years and months have no fixed length; use days, e.g. P30D"
    if _FRACTION_NOT_SECONDS.search(text):
        return "only seconds may have a fraction, e.g. PT1M30S or PT0.5S"
    return ""


def parse_duration(text: str) -> timedelta:
    """Parse an ISO-8601 duration into a non-negative ``timedelta``.

    Guarantees: ``parse_duration(format_duration(td)) == td`` for every non-negative ``td``;
    raises ``ValueError`` (never returns) for anything outside the grammar above, for
    fractions finer than a microsecond and for durations larger than ``timedelta.max``.
    """
    stripped = text.strip()
    match = _GRAMMAR.fullmatch(stripped)
    if match is None or not any(match.groups()) or stripped[-1:] in ("T", "t"):
        raise _error(text, _reason(stripped))
    weeks, days, hours, minutes, seconds, fraction = match.groups()
    micros = 0
    if fraction:
        digits = fraction.ljust(6, "0")
        if digits[6:].strip("0"):
            raise _error(text, "finer than one microsecond")
        micros = int(digits[:6])
    try:
        return timedelta(
            weeks=int(weeks or 0),
            days=int(days or 0),
            hours=int(hours or 0),
            minutes=int(minutes or 0),
            seconds=int(seconds or 0),
            microseconds=micros,
        )
    except OverflowError:
        raise _error(text, "too large") from None


def format_duration(td: timedelta) -> str:
    """Format a non-negative ``timedelta`` as the shortest ISO-8601 duration.

    Examples: ``PT0S``, ``PT0.25S``, ``PT1M30S``, ``P1DT2H``. Weeks are written as days.
    Raises ``ValueError`` for negative durations.
    """
    if td < timedelta(0):
        raise ValueError(f"negative durations cannot be formatted: {td!r}")
    days, seconds, micros = td.days, td.seconds, td.microseconds
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    out = f"P{days}D" if days else "P"
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if seconds or micros:
        frac = f".{micros:06d}".rstrip("0") if micros else ""
        clock += f"{seconds}{frac}S"
    if clock:
        out += "T" + clock
    return "PT0S" if out == "P" else out


def _validate(value: object) -> timedelta:
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise _error("-" + format_duration(-value), "negative durations are not allowed")
        return value
    if isinstance(value, str):
        return parse_duration(value)
    raise _error(value)


#: Pydantic field type: accepts ISO-8601 strings and non-negative ``timedelta`` objects;
#: serialises to the ISO string in JSON mode (``timedelta`` in Python mode); its JSON schema
#: is a string with :data:`DURATION_PATTERN`.
Duration = Annotated[
    timedelta,
    BeforeValidator(_validate),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "pattern": DURATION_PATTERN, "description": "ISO-8601 duration"}
    ),
]
