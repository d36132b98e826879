"""Process logging: one stderr handler that never prints a registered secret.

:func:`setup_logging` configures the root logger with one handler on stderr whose
:class:`SecretFilter` masks every secret registered with :mod:`waxflow.expressions` (``******``)
in every record that reaches it, whichever logger made it: waxflow's own, and third-party
ones that propagate to the root (httpx logs each request's full URL, query string included;
urllib3, botocore, snowflake, dbt...). Masking is applied to the final message
(``record.getMessage()``, so a secret passed as a ``%``-argument is caught too), to the
formatted traceback and to the stack text.

``fmt="text"``: ``time LEVEL logger message``. ``fmt="json"``: one JSON object per line
(``time`` ISO-8601 UTC, ``level``, ``logger``, ``message``, and ``exception`` when there is
a traceback), for log shippers.

The levels of an execution's own log lines (the ``logs`` of its document, see
:meth:`waxflow.execution.Execution.log`) are Kestra's: :data:`LINE_LEVELS`;
:func:`line_level` maps any spelling to one of them and :func:`python_level` maps one to the
:mod:`logging` level its stderr line is printed at.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from waxflow.expressions import redact

__all__ = ["FORMATS", "LINE_LEVELS", "JsonFormatter", "SecretFilter", "line_level",
           "python_level", "setup_logging"]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_TRACEBACK_FORMATTER = logging.Formatter()

#: the levels of an execution's log lines, lowest first
LINE_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")
_LINE_LEVEL = {**{name: name for name in LINE_LEVELS},
               "WARNING": "WARN", "CRITICAL": "ERROR", "FATAL": "ERROR"}
#: TRACE has no :mod:`logging` level: printed as DEBUG
_PYTHON_LEVEL = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO,
                 "WARN": logging.WARNING, "ERROR": logging.ERROR}


def line_level(level: str) -> str:
    """The execution-log level of ``level``: one of :data:`LINE_LEVELS` (any case; WARNING
    is WARN, CRITICAL and FATAL are ERROR); INFO for a name it does not know."""
    name = _LINE_LEVEL.get(level)
    if name is None:
        name = _LINE_LEVEL.get(str(level).strip().upper(), "INFO")
    return name


def python_level(level: str) -> int:
    """The :mod:`logging` level a line of execution-log level ``level`` is printed at (INFO
    for a name that is not one of :data:`LINE_LEVELS`)."""
    return _PYTHON_LEVEL.get(level, logging.INFO)


class SecretFilter(logging.Filter):
    """Masks registered secrets in a record's message, traceback and stack text.

    The record is rewritten in place (``msg`` becomes the masked final message, ``args``
    empty), so every handler that sees it afterwards gets the masked text. Never drops a
    record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as usual
            return True
        record.msg = redact(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACK_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message`` (+ ``exception``,
    ``stack``). Line breaks inside the message are escaped, so a line is a record."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        doc = {
            "time": when.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def _is_ours(handler: logging.Handler) -> bool:
    return getattr(handler, "_waxflow", False) is True


def setup_logging(level: str = "INFO", fmt: str = "text", *,
                  stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger: ``level`` (a level name, any case: DEBUG INFO WARNING
    ERROR CRITICAL, WARN) and one handler on ``stream`` (default stderr) in format ``fmt``
    (``text`` or ``json``), with a :class:`SecretFilter`.

    Calling it again replaces the handler it installed before. Handlers somebody else put
    on the root logger stay, and get a :class:`SecretFilter` too. Raises ValueError for an
    unknown level or format. Returns the handler.
    """
    name = level.strip().upper()
    if name == "WARN":
        name = "WARNING"
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r} (expected DEBUG, INFO, WARNING, "
                         "ERROR or CRITICAL)")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (expected one of {', '.join(FORMATS)})")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler._waxflow = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(SecretFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if _is_ours(h)]:
        root.removeHandler(old)
        old.close()
    for other in root.handlers:
        if not any(isinstance(f, SecretFilter) for f in other.filters):
            other.addFilter(SecretFilter())
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler
