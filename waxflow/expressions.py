"""Jinja2 expressions of a flow: sandboxed, compiled once, rendered per record.

Guarantees:

* Only templates written in the flow file are compiled. Values coming from records are
  context data: they are never parsed as templates, and rendered output is never rendered
  again, so a record field holding ``{{ 7*7 }}`` comes out as that literal text.
* A template that is a single expression (``"{{ trigger.value }}"``) renders to the native
  Python value (dict, bool, int, ...) exactly as produced; strings are never re-parsed (unlike
  Jinja's ``NativeEnvironment``, which ``literal_eval``\\ s them). Any other template renders
  to a string. A template without ``{{``/``{%``/``{#`` is a constant and skips Jinja.
* Rendering runs in Jinja's immutable sandbox (no private attributes, no mutation of lists or
  dicts). Undefined values raise. ``a.b`` on a dict reads the key ``b`` before any dict method
  of that name, so record fields called ``items`` or ``values`` work.
* Every failure while rendering raises :class:`ExpressionError`, whose text is redacted.
* Every secret value handed out by :class:`Secrets` is registered with a process-wide
  redactor: :func:`redact` / :func:`redact_obj` replace it with ``******``. Error text meant
  for users goes through :func:`mask`: registered secrets plus the caller's own (a password,
  a URL's query, header values) masked, on one line, length-capped.
* A value computed from a secret inside a template (``secret('X') | upper``, ``| reverse``,
  ``"Bearer " ~ secret('X')``, ``secret('X').split(',')``) is registered too, when it is
  computed (see :func:`_mark_derived`). Record data on its own is never registered, so it is
  never masked.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import functools
import json
import math
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import jinja2
import yaml
from jinja2 import meta, nodes
from jinja2.nativetypes import NativeCodeGenerator, NativeEnvironment
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from waxflow.durations import format_duration
from waxflow.template_direct import SPECIAL_NAMES, Fallback, direct

__all__ = [
    "ALLOWED_ROOTS",
    "STATIC_ROOTS",
    "ExpressionError",
    "Expressions",
    "Redactor",
    "References",
    "SecretError",
    "Secrets",
    "Template",
    "install_reader",
    "mask",
    "read",
    "redact",
    "redact_obj",
    "register_secret",
    "render_static",
    "tojson",
]

#: Root variables a flow's templates may use (besides names the template binds itself).
ALLOWED_ROOTS = frozenset(
    {"trigger", "outputs", "execution", "flow", "env", "secret", "now", "task", "taskrun",
     "labels", "parents", "parent", "loop", "inputs", "vars"}
)  # fmt: skip
MASK = "******"
#: the longest error text :func:`mask` returns (longer text is cut, ending in ``...``)
ERROR_TEXT_LIMIT = 600
_MIN_SECRET_LEN = 3
_MARKERS = ("{{", "{%", "{#")


# --------------------------------------------------------------------------- redaction
def _forms(value: str) -> set[str]:
    """The ways ``value`` may be spelled in text: as is, JSON-escaped (ASCII or not) and
    Python-``repr``-escaped (as text and as UTF-8 bytes)."""
    return {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
            repr(value)[1:-1], repr(value.encode())[2:-1]}


def _pattern(values: Iterable[str]) -> re.Pattern[str]:
    ordered = sorted(values, key=len, reverse=True)  # longest first: overlaps mask fully
    return re.compile("|".join(map(re.escape, ordered)))


class Redactor:
    """Set of secret values, and a single compiled regex that masks them. Thread-safe.

    The regex is rebuilt only when a new value is added; :meth:`redact` takes no lock.
    Values shorter than 3 characters are not masked (they would mask ordinary text).
    A value's escaped forms (JSON, Python ``repr``) are masked too.
    """

    def __init__(self) -> None:
        self._values: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        """Register ``value``; afterwards :meth:`redact` masks it everywhere."""
        if len(value) < _MIN_SECRET_LEN or value in self._values:
            return
        with self._lock:
            values = self._values | _forms(value)
            self._pattern = _pattern(values)
            self._values = values  # published after the pattern: a known value is masked

    def redact(self, text: str, extra: Iterable[str | None] = ()) -> str:
        """``text`` with every registered value, and every value of ``extra`` (3+ characters,
        in any of its forms), replaced by ``******``."""
        forms = {f for v in extra if v and len(v) >= _MIN_SECRET_LEN for f in _forms(v)}
        pattern = _pattern(self._values | forms) if forms else self._pattern
        return text if pattern is None else pattern.sub(MASK, text)

    def redact_obj(self, obj: Any) -> Any:
        """Copy of a JSON-like structure with every string (keys too) redacted."""
        if self._pattern is None:
            return obj
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {self.redact_obj(k): self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return type(obj)(self.redact_obj(v) for v in obj)
        return obj


_REDACTOR = Redactor()
register_secret = _REDACTOR.add
redact = _REDACTOR.redact
redact_obj = _REDACTOR.redact_obj


def mask(text: str, extra_secrets: Iterable[str | None] = (), *,
         limit: int = ERROR_TEXT_LIMIT) -> str:
    """``text`` fit for an error message: registered secrets and each of ``extra_secrets``
    (3+ characters; also escaped) replaced by ``******``, white space folded to one line, at
    most ``limit`` characters (cut ones end in ``...``). Masking comes before the cut, so a
    secret is never shown in part."""
    text = " ".join(_REDACTOR.redact(text, extra_secrets).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- secrets
class SecretError(LookupError):
    """A secret is missing or the secrets file is unusable. Never contains a secret value."""


class Secrets:
    """Looks up ``secret('NAME')``: env ``WAXFLOW_SECRET_NAME`` first, then the secrets file.

    The env name is ``NAME`` upper-cased with non-alphanumerics replaced by ``_``. The file
    (a YAML or JSON mapping; path given or from ``$WAXFLOW_SECRETS_FILE``) is read once, on
    first use; its keys are matched exactly, then in the env-name form (``SLACK_WEBHOOK``).
    Every value returned is registered with the process-wide redactor. Thread-safe.
    """

    def __init__(
        self, environ: Mapping[str, str] | None = None, file: str | os.PathLike[str] | None = None
    ) -> None:
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        path = file if file is not None else self._environ.get("WAXFLOW_SECRETS_FILE")
        self.file = Path(path) if path else None
        self._from_file: dict[str, str] | None = None
        self._lock = threading.Lock()

    @staticmethod
    def env_name(name: str) -> str:
        """The environment variable holding secret ``name``."""
        return "WAXFLOW_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()

    def get(self, name: str) -> str:
        """The value of secret ``name``; raises :class:`SecretError` naming it if undefined."""
        value = self._lookup(name)
        if value is None:
            key = self.env_name(name)
            where = f" or add it to {self.file}" if self.file else ""
            raise SecretError(f"secret {name!r} is not defined (set ${key}{where})")
        register_secret(value)
        return value

    __call__ = get

    def defined(self, name: str) -> bool:
        """Whether :meth:`get` finds ``name`` (without handing the value out). Raises
        :class:`SecretError` when the secrets file is unusable."""
        return self._lookup(name) is not None

    def _lookup(self, name: str) -> str | None:
        key = self.env_name(name)
        value = self._environ.get(key)
        if value is None:
            stored = self._file_values()
            value = stored.get(name, stored.get(key[len("WAXFLOW_SECRET_") :]))
        return value

    def register_all(self) -> None:
        """Register every secret this object could return, before any is used."""
        for key, value in self._environ.items():
            if key.startswith("WAXFLOW_SECRET_"):
                register_secret(value)
        for value in self._file_values().values():
            register_secret(value)

    def _file_values(self) -> dict[str, str]:
        if self._from_file is not None:
            return self._from_file
        if self.file is None:
            return {}
        with self._lock:
            if self._from_file is None:
                self._from_file = _read_secrets_file(self.file)
            return self._from_file


def _read_secrets_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise SecretError(f"cannot read secrets file {path}: {type(exc).__name__}") from None
    try:  # messages of parser errors quote the file: never pass them on
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError):
        raise SecretError(f"secrets file {path} is not valid YAML or JSON") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SecretError(f"secrets file {path} must hold a mapping of names to values")
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SecretError(f"secret {key!r} in {path} must be a string")
        out[str(key)] = str(value)
    return out


# --------------------------------------------------------------------------- environment
class ExpressionError(Exception):
    """A template failed to compile or render. The message is redacted."""

    def __init__(self, source: str, reason: str) -> None:
        shown = source if len(source) <= 200 else source[:197] + "..."
        super().__init__(redact(f"cannot render {shown!r}: {reason}"))
        self.source = source
        self.reason = redact(reason)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, jinja2.UndefinedError | SecretError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


_NOTHING: Any = object()


def _concat(values: Iterable[Any]) -> Any:
    """One output: that value as is (an undefined one raises). Several: joined as text."""
    it = iter(values)
    first = next(it, _NOTHING)
    if first is _NOTHING:
        return ""
    second = next(it, _NOTHING)
    if second is _NOTHING:
        if isinstance(first, jinja2.Undefined):
            str(first)  # StrictUndefined raises here
        return first
    return "".join([str(first), str(second), *[str(v) for v in it]])


# ----------------------------------------------------------------- Pebble's ``??`` operator
#: what ``??`` becomes before Jinja's lexer sees it (a name token only our parser accepts)
_COALESCE = "__waxflow_coalesce__"


# Jinja refuses new node classes (its metaclass' __new__ raises "can't create custom node
# types"); this builds one as that metaclass did (fields = the base's + these).
Coalesce: Any = type.__new__(nodes.NodeType, "Coalesce", (nodes.Expr,), {
    "__module__": __name__,
    "__doc__": """``left ?? right`` (Pebble's null-coalescing operator, as Kestra flows write
    it): ``left`` unless it is undefined (a missing key or variable, at any depth) or null,
    then ``right``. It binds tighter than filters: ``a ?? '' | upper`` is
    ``(a ?? '') | upper``.""",
    "fields": (*nodes.Expr.fields, "left", "right"),
    "attributes": nodes.Expr.attributes,
    "abstract": False,
})


class _Parser(Parser):
    def parse_postfix(self, node: nodes.Expr) -> nodes.Expr:
        node = super().parse_postfix(node)
        while self.stream.current.test(f"name:{_COALESCE}"):
            lineno = next(self.stream).lineno
            node = Coalesce(node, self.parse_unary(with_filter=False), lineno=lineno)
        return node


def _rewrite_coalesce(source: str) -> str:
    """``source`` with each ``??`` inside ``{{ }}``/``{% %}`` (not in a string literal)
    replaced by the :data:`_COALESCE` token."""
    if "??" not in source:
        return source
    out: list[str] = []
    i, n = 0, len(source)
    in_tag: str | None = None  # the closing delimiter of the tag we are in
    quote: str | None = None
    while i < n:
        ch = source[i]
        if in_tag is None:
            if source.startswith(("{{", "{%"), i):
                in_tag = "}}" if source[i + 1] == "{" else "%}"
                out.append(source[i:i + 2])
                i += 2
                continue
        elif quote is not None:
            if ch == "\\":
                out.append(source[i:i + 2])
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif source.startswith(in_tag, i):
            in_tag = None
            out.append(source[i:i + 2])
            i += 2
            continue
        elif source.startswith("??", i):
            out.append(f" {_COALESCE} ")
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


class _CodeGenerator(NativeCodeGenerator):
    """Native output, but expressions are never folded to text at compile time."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Any, finalize: Any) -> Any:
        if isinstance(node, nodes.TemplateData):
            return node.as_const(frame.eval_ctx)
        raise nodes.Impossible()

    def visit_Coalesce(self, node: Any, frame: Any) -> None:  # Jinja's visitor naming
        self.write("environment.coalesce((lambda: ")
        self.visit(node.left, frame)
        self.write("), (lambda: ")
        self.visit(node.right, frame)
        self.write("))")


class _Environment(ImmutableSandboxedEnvironment, NativeEnvironment):
    """Immutable sandbox + native single-expression output + dict-key-first attributes."""

    code_generator_class = _CodeGenerator
    concat = staticmethod(_concat)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:  # "in": no defaultdict side effects
            return obj[attribute]
        return super().getattr(obj, attribute)

    def preprocess(self, source: str, name: str | None = None,
                   filename: str | None = None) -> str:
        return super().preprocess(_rewrite_coalesce(source), name, filename)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _Parser(self, source, name, filename).parse()

    @staticmethod
    def coalesce(left: Any, right: Any) -> Any:
        """Run time of :class:`Coalesce`: ``left()`` unless undefined or None."""
        try:
            value = left()
        except jinja2.UndefinedError:
            return right()
        if value is None or isinstance(value, jinja2.Undefined):
            return right()
        return value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime | date | time):
        return obj.isoformat()
    if isinstance(obj, timedelta):
        return format_duration(obj) if obj >= timedelta(0) else str(obj)
    if isinstance(obj, Decimal | UUID):
        return str(obj)
    if isinstance(obj, bytes | bytearray):
        return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, set | frozenset):
        return list(obj)
    if isinstance(obj, jinja2.Undefined):
        str(obj)  # raises
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def tojson(value: Any) -> str:
    """Compact, strictly valid JSON (RFC 8259): non-ASCII kept; dates as ISO text,
    Decimal/UUID as text, bytes base64, sets as lists.

    NaN, Infinity and -Infinity (floats a record may carry: JSON has no token for them, and
    strict parsers reject Python's bare ``NaN``) are written as ``null``, also as dict keys.
    Fast path: one ``json.dumps`` with ``allow_nan=False``; only when it refuses a float is
    a finite copy made and encoded.
    """
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                          default=_json_default, allow_nan=False)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
    return json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"),
                      default=_json_default, allow_nan=False)


def _finite(value: Any) -> Any:
    """Copy of ``value`` with every non-finite float (values and keys) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_finite(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_finite(v) for v in value]
    return value


def fromjson(text: str | bytes) -> Any:
    """Parse JSON text."""
    return json.loads(text)


_JQ_STEP = re.compile(
    r"""\.(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|"(?P<quoted>(?:[^"\\]|\\.)*)")"""
    r"""|\[\s*(?:(?P<index>-?\d+)|"(?P<key>(?:[^"\\]|\\.)*)"|(?P<all>))\s*\]""")
JQ_HELP = ("waxflow's jq() takes a path: `.`, `.a.b`, `.\"a b\"`, `.a[0]`, `.a[-1]`, "
           "`.[\"k\"]`, `.a[]`; for anything else use Jinja (e.g. `x.a | map(attribute='b')`)")


def jq_steps(program: str) -> list[tuple[str, Any]]:
    """The steps of a jq path (see :data:`JQ_HELP`); ValueError for anything else."""
    text = program.strip()
    if text == ".":
        return []
    steps: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        if text.startswith(".[", pos):
            pos += 1  # `.["k"]`, `.[0]`, `.[]`: the dot before a bracket is optional
        match = _JQ_STEP.match(text, pos)
        if match is None or (pos == 0 and text[0] != "."):
            raise ValueError(f"jq expression {program!r} is not supported: {JQ_HELP}")
        if match["name"] is not None:
            steps.append(("key", match["name"]))
        elif match["quoted"] is not None or match["key"] is not None:
            steps.append(("key", json.loads('"' + (match["quoted"] or match["key"] or "") + '"')))
        elif match["index"] is not None:
            steps.append(("index", int(match["index"])))
        else:
            steps.append(("all", None))
        pos = match.end()
    return steps


def jq(value: Any, program: str) -> list[Any]:
    """Kestra's ``jq`` filter for paths: the list of results (``| first`` for one). Text
    input is parsed as JSON first. A missing key gives null, as in jq."""
    if isinstance(value, str | bytes):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    results = [value]
    for kind, arg in jq_steps(program):
        out: list[Any] = []
        for item in results:
            if kind == "key":
                if item is not None and not isinstance(item, dict):
                    raise ValueError(f"jq {program!r}: cannot index {type(item).__name__} "
                                     f"with {arg!r}")
                out.append(None if item is None else item.get(arg))
            elif kind == "index":
                if item is not None and not isinstance(item, list | tuple):
                    raise ValueError(f"jq {program!r}: cannot index {type(item).__name__} "
                                     "with a number")
                out.append(item[arg] if item is not None and -len(item) <= arg < len(item)
                           else None)
            else:
                if isinstance(item, dict):
                    out.extend(item.values())
                elif isinstance(item, list | tuple):
                    out.extend(item)
                else:
                    raise ValueError(f"jq {program!r}: cannot iterate over "
                                     f"{type(item).__name__}")
        results = out
    return results


def now(format: str = "iso", timeZone: str | None = None,
        existingFormat: str | None = None, locale: str | None = None) -> str:
    """Kestra's ``now()``: the current time formatted as the ``date`` filter does (default
    ``iso``: ``2026-11-29T18:17:08.123456Z`` in UTC)."""
    return str(date_filter(datetime.now(UTC), format, timeZone=timeZone))


# ------------------------------------------------------------ Kestra's (Pebble) date filters
#: Kestra's named formats (AbstractDate.FORMATTERS), as Java patterns or ISO formatter names
_NAMED_FORMATS: dict[str, str] = {
    "iso": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX",
    "iso_sec": "yyyy-MM-dd'T'HH:mm:ssXXX",
    "sql": "yyyy-MM-dd HH:mm:ss.SSSSSS",
    "sql_seq": "yyyy-MM-dd HH:mm:ss",
}
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
#: ChronoUnit names -> (timedelta keyword, factor) for time-based units; date-based ones
#: (DAYS and longer) move the local date, keeping the local time (Java's ZonedDateTime.plus)
_TIME_UNITS: dict[str, tuple[str, int]] = {
    "NANOS": ("microseconds", 0), "MICROS": ("microseconds", 1),
    "MILLIS": ("milliseconds", 1), "SECONDS": ("seconds", 1), "MINUTES": ("minutes", 1),
    "HOURS": ("hours", 1), "HALF_DAYS": ("hours", 12)}
_DATE_UNITS: dict[str, tuple[int, int]] = {  # unit -> (days, months)
    "DAYS": (1, 0), "WEEKS": (7, 0), "MONTHS": (0, 1), "YEARS": (0, 12),
    "DECADES": (0, 120), "CENTURIES": (0, 1200), "MILLENNIA": (0, 12000)}


def _zone(name: str | None) -> Any:
    """A ``timeZone`` argument as a tzinfo (UTC when None, as waxflow's clock is)."""
    if name is None:
        return UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name in ("Z", "UTC", "GMT"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    match = re.fullmatch(r"(?:UTC|GMT)?([+-])(\d{1,2})(?::?(\d{2}))?", name)
    if match:
        sign = -1 if match[1] == "-" else 1
        return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3] or 0)))
    raise ValueError(f"unknown time zone {name!r}")


@functools.lru_cache(maxsize=256)
def _pattern_tokens(pattern: str) -> tuple[tuple[str, int], ...]:
    """A Java DateTimeFormatter pattern as (letter, count) runs; ("'", 0) carries literal
    text as its letter field (``("'text", 0)``). Cached: a flow's patterns are few."""
    out: list[tuple[str, int]] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "'":
            end = i + 1
            text = []
            while end < n:
                if pattern[end] == "'":
                    if end + 1 < n and pattern[end + 1] == "'":
                        text.append("'")
                        end += 2
                        continue
                    break
                text.append(pattern[end])
                end += 1
            if end >= n:
                raise ValueError(f"unclosed quote in date pattern {pattern!r}")
            out.append(("'" + ("".join(text) if text or end > i + 1 else "'"), 0))
            i = end + 1
        elif ch.isascii() and ch.isalpha():
            j = i
            while j < n and pattern[j] == ch:
                j += 1
            out.append((ch, j - i))
            i = j
        else:
            out.append(("'" + ch, 0))
            i += 1
    return tuple(out)


def _offset(value: datetime, count: int, z_for_zero: bool, colon: bool | None = None) -> str:
    delta = value.utcoffset() or timedelta(0)
    if z_for_zero and delta == timedelta(0):
        return "Z"
    total = int(delta.total_seconds())
    sign = "-" if total < 0 else "+"
    hours, minutes = divmod(abs(total) // 60, 60)
    if colon is None:  # X / x: +HH (+HHmm when minutes), XX: +HHMM, XXX: +HH:MM
        if count == 1:
            return f"{sign}{hours:02d}" + (f"{minutes:02d}" if minutes else "")
        colon = count in (3, 5)
    return f"{sign}{hours:02d}{':' if colon else ''}{minutes:02d}"


def _format_field(value: datetime, letter: str, count: int) -> str:
    """One run of pattern letters of a Java DateTimeFormatter pattern (English names)."""
    if letter in "yu":
        return f"{value.year % 100:02d}" if count == 2 else f"{value.year:0{count}d}"
    if letter in "ML":
        if count >= 4:
            return _MONTHS[value.month - 1]
        if count == 3:
            return _MONTHS[value.month - 1][:3]
        return f"{value.month:0{count}d}"
    if letter == "d":
        return f"{value.day:0{count}d}"
    if letter == "D":
        return f"{value.timetuple().tm_yday:0{count}d}"
    if letter == "H":
        return f"{value.hour:0{count}d}"
    if letter == "k":
        return f"{value.hour or 24:0{count}d}"
    if letter == "h":
        return f"{(value.hour % 12) or 12:0{count}d}"
    if letter == "K":
        return f"{value.hour % 12:0{count}d}"
    if letter == "m":
        return f"{value.minute:0{count}d}"
    if letter == "s":
        return f"{value.second:0{count}d}"
    if letter == "S":
        return f"{value.microsecond:06d}000"[:count].ljust(count, "0")
    if letter == "n":
        return f"{value.microsecond * 1000:0{count}d}"
    if letter == "a":
        return "AM" if value.hour < 12 else "PM"
    if letter in "Ee":
        name = _DAYS[value.weekday()]
        if letter == "e" and count <= 2:
            return f"{value.isoweekday() % 7 + 1:0{count}d}"  # localized: Sunday first (US)
        return name if count >= 4 else name[:3]
    if letter == "X":
        return _offset(value, count, True)
    if letter == "x":
        return _offset(value, count, False)
    if letter == "Z":
        if count <= 3:
            return _offset(value, count, False, colon=False)
        if count == 4:
            off = _offset(value, 3, False, colon=True)
            return "GMT" if off == "+00:00" else f"GMT{off}"
        return _offset(value, 5, True, colon=True)
    if letter == "z":
        name = value.tzname() or _offset(value, 3, False, colon=True)
        return "UTC" if value.tzinfo is UTC else name
    if letter == "V" and count == 2:
        key = getattr(value.tzinfo, "key", None)
        return key or ("Z" if value.tzinfo is UTC else _offset(value, 3, True, colon=True))
    if letter == "G":
        return "AD" if count <= 3 else "Anno Domini"
    raise ValueError(f"date pattern letter {letter!r} is not supported")


def _fraction(value: datetime) -> str:
    """Java's ISO fraction: only when non-zero, in as many digits as needed (in threes)."""
    if not value.microsecond:
        return ""
    text = f"{value.microsecond:06d}"
    return "." + (text[:3] if text.endswith("000") else text)


_ISO_NAMES = frozenset({
    "iso_local_date", "iso_date", "iso_local_time", "iso_time", "iso_offset_time",
    "iso_local_date_time", "iso_offset_date_time", "iso_date_time", "iso_zoned_date_time",
    "iso_ordinal_date", "iso_week_date", "rfc_1123_date_time", "iso_instant"})


def _iso_named(value: datetime, name: str) -> str | None:
    """The ISO formatters Kestra names (``iso_date_time``, ...), or None for other names."""
    if name not in _ISO_NAMES:
        return None
    if name == "iso_instant":
        utc = value.astimezone(UTC)
        return utc.strftime("%Y-%m-%dT%H:%M:%S") + _fraction(utc) + "Z"
    offset = _offset(value, 3, True)
    day = value.strftime("%Y-%m-%d")
    if name == "iso_local_date":
        return day
    if name == "iso_date":
        return day + offset
    if name == "iso_ordinal_date":
        return f"{value.year:04d}-{value.timetuple().tm_yday:03d}" + offset
    if name == "iso_week_date":
        return "{:04d}-W{:02d}-{}".format(*value.isocalendar()) + offset
    if name == "rfc_1123_date_time":
        return (f"{_DAYS[value.weekday()][:3]}, {value.day} {_MONTHS[value.month - 1][:3]} "
                f"{value.year:04d} {value.strftime('%H:%M:%S')} "
                + ("GMT" if offset == "Z" else offset.replace(":", "")))
    local_time = value.strftime("%H:%M:%S") + _fraction(value)
    if name == "iso_local_time":
        return local_time
    if name in ("iso_time", "iso_offset_time"):
        return local_time + offset
    if name == "iso_local_date_time":
        return f"{day}T{local_time}"
    if name == "iso_offset_date_time":
        return f"{day}T{local_time}{offset}"
    zone = getattr(value.tzinfo, "key", None)  # iso_date_time, iso_zoned_date_time
    return f"{day}T{local_time}{offset}" + (f"[{zone}]" if zone else "")


def format_date(value: datetime, pattern: str) -> str:
    """``value`` formatted by a Java ``DateTimeFormatter`` pattern (``yyyy-MM-dd``,
    ``dd MMM yyyy HH:mm:ss.SSSXXX``, ...) or one of Kestra's named formats (``iso``,
    ``iso_sec``, ``sql``, ``sql_seq``, ``iso_date_time``, ``iso_instant``, ...); English
    names. ValueError for a letter it does not support (localized styles such as
    ``medium`` are refused too)."""
    named = _iso_named(value, pattern)
    if named is not None:
        return named
    if pattern in ("full", "long", "medium", "short"):
        raise ValueError(f"the localized date style {pattern!r} is not supported: give a "
                         "pattern such as 'yyyy-MM-dd HH:mm:ss'")
    out: list[str] = []
    for letter, count in _pattern_tokens(_NAMED_FORMATS.get(pattern, pattern)):
        out.append(letter[1:] if count == 0 else _format_field(value, letter, count))
    return "".join(out)


_STRPTIME = {"yyyy": "%Y", "uuuu": "%Y", "yy": "%y", "MMMM": "%B", "MMM": "%b", "MM": "%m",
             "M": "%m", "dd": "%d", "d": "%d", "HH": "%H", "H": "%H", "hh": "%I", "h": "%I",
             "mm": "%M", "m": "%M", "ss": "%S", "s": "%S", "a": "%p", "EEEE": "%A",
             "EEE": "%a", "D": "%j", "DDD": "%j", "X": "%z", "XX": "%z", "XXX": "%z",
             "x": "%z", "xx": "%z", "xxx": "%z", "Z": "%z", "ZZ": "%z", "ZZZ": "%z",
             "ZZZZZ": "%z"}


def _parse_with(text: str, pattern: str) -> datetime:
    """``text`` read with a Java pattern (``existingFormat``): the letters of dates and times
    (fractions ``S`` up to 6 digits); ValueError when it does not match."""
    named = {"iso_local_date": "yyyy-MM-dd", "iso_date": "yyyy-MM-dd",
             "iso_local_date_time": "yyyy-MM-dd'T'HH:mm:ss", **_NAMED_FORMATS}
    if pattern in ("iso_date_time", "iso_offset_date_time", "iso_zoned_date_time",
                   "iso_instant"):
        return datetime.fromisoformat(re.sub(r"\[[^\]]*\]$", "", text))
    fmt: list[str] = []
    for letter, count in _pattern_tokens(named.get(pattern, pattern)):
        if count == 0:
            fmt.append(letter[1:].replace("%", "%%"))
        elif letter == "S" and count <= 6:
            fmt.append("%f")
        elif letter * count in _STRPTIME:
            fmt.append(_STRPTIME[letter * count])
        else:
            raise ValueError(f"date pattern {letter * count!r} cannot be read "
                             "(existingFormat)")
    return datetime.strptime(text, "".join(fmt))


def to_datetime(value: Any, zone: Any, existing_format: str | None = None) -> datetime:
    """Kestra's date input (AbstractDate.convert): a datetime (naive: in ``zone``), a date
    (noon in ``zone``), epoch seconds, or text: ISO-8601 with an offset, else a local date
    and time in ``zone``, else a local date at the start of its day (``existing_format``
    reads other text)."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=zone)
    if isinstance(value, date):
        return datetime.combine(value, time(12), zone)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, zone)
    if not isinstance(value, str):
        raise ValueError(f"cannot read a date from {type(value).__name__}")
    text = value.strip()
    region = re.search(r"\[([^\]]*)\]$", text)  # ISO_ZONED_DATE_TIME's [Europe/Paris]
    try:
        parsed = (_parse_with(text, existing_format) if existing_format is not None
                  else datetime.fromisoformat(text[:region.start()] if region else text))
        if region is not None:
            parsed = (parsed.replace(tzinfo=_zone(region[1])) if parsed.tzinfo is None
                      else parsed.astimezone(_zone(region[1])))
    except ValueError:
        raise ValueError(f"cannot read a date from {value!r}"
                         + (f" with format {existing_format!r}" if existing_format else "")
                         ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=zone)


def date_filter(value: Any, format: str = "iso", *,
                timeZone: str | None = None, existingFormat: str | None = None,
                locale: str | None = None) -> Any:
    """Kestra's ``date`` filter: ``value`` (see :func:`to_datetime`) shown in ``timeZone``
    (default UTC) with ``format`` (a Java pattern or a named format, default ``iso``);
    null stays null. ``locale`` is accepted; names are English."""
    if value is None:
        return None
    zone = _zone(timeZone)
    return format_date(to_datetime(value, zone, existingFormat).astimezone(zone), format)


def date_add(value: Any, amount: int, unit: str, format: str = "iso", *,
             timeZone: str | None = None, existingFormat: str | None = None,
             locale: str | None = None) -> Any:
    """Kestra's ``dateAdd`` filter: ``value`` plus ``amount`` ``unit`` (a ChronoUnit name:
    SECONDS, MINUTES, HOURS, DAYS, WEEKS, MONTHS, YEARS, ...), formatted as ``date`` does.
    Date units move the local date and keep the local time (the 31st plus one month is the
    last day of the next month); time units move the instant."""
    if value is None:
        return None
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValueError(f"dateAdd: amount must be a whole number, got {amount!r}")
    zone = _zone(timeZone)
    moment = to_datetime(value, zone, existingFormat)
    name = str(unit).upper()
    if name in _TIME_UNITS:
        key, factor = _TIME_UNITS[name]
        step = (timedelta(microseconds=amount / 1000) if name == "NANOS"
                else timedelta(**{key: amount * factor}))
        moved = (moment.astimezone(UTC) + step).astimezone(moment.tzinfo)
    elif name in _DATE_UNITS:
        days, months = _DATE_UNITS[name]
        local = moment.replace(tzinfo=None)
        if months:
            index = local.year * 12 + local.month - 1 + amount * months
            year, month = divmod(index, 12)
            import calendar

            last = calendar.monthrange(year, month + 1)[1]
            local = local.replace(year=year, month=month + 1, day=min(local.day, last))
        local += timedelta(days=amount * days)
        moved = local.replace(tzinfo=moment.tzinfo)
    else:
        raise ValueError(f"dateAdd: unknown unit {unit!r} (one of "
                         f"{', '.join([*_TIME_UNITS, *_DATE_UNITS])})")
    return date_filter(moved, format, timeZone=timeZone)


def _timestamp(scale: int) -> Any:
    def convert(value: Any, *, timeZone: str | None = None,
                existingFormat: str | None = None) -> Any:
        if value is None:
            return None
        moment = to_datetime(value, _zone(timeZone), existingFormat)
        whole = int(moment.timestamp())
        return whole * scale + (moment.microsecond * scale) // 1_000_000

    convert.__doc__ = f"Kestra's timestamp filter: epoch time in 1/{scale} seconds."
    return convert


def slugify(value: Any) -> Any:
    """Kestra's ``slugify``: blanks become ``-``, accents and every character other than
    ASCII letters, digits, ``-`` and ``_`` are dropped, ``_`` becomes ``-``, runs of ``-``
    collapse, one leading and one trailing ``-`` go, lower case; null stays null."""
    if value is None:
        return None
    import unicodedata

    text = unicodedata.normalize("NFD", re.sub(r"\s", "-", str(value)))
    text = re.sub(r"[^A-Za-z0-9_-]", "", text).replace("_", "-")
    text = re.sub(r"-{2,}", "-", text)
    text = text.removeprefix("-").removesuffix("-")
    return text.lower()


def _is_empty(value: Any) -> bool:
    """Pebble's ``empty`` test: undefined, null, a blank string, an empty list or map."""
    if value is None or isinstance(value, jinja2.Undefined):
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple | dict | set | frozenset):
        return not value
    return False


def default_filter(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """Pebble's ``default``: ``default_value`` when ``value`` is empty (undefined at any
    depth, null, a blank string, an empty list or map), else ``value``."""
    return default_value if _is_empty(value) else value


#: how deep :func:`render` follows templates that render to templates
RENDER_DEPTH = 10


#: how ``read(uri)`` reads an internal storage file (installed by the layer that owns the
#: storage: ``waxflow.dataflows.subflow_runner``); empty until then
_READERS: list[Callable[[str], str]] = []


def install_reader(reader: Callable[[str], str]) -> None:
    """Set how :func:`read` reads a file: ``reader(uri) -> str``, which must refuse anything
    outside internal storage (with :class:`ValueError` naming the URI)."""
    _READERS[:] = [reader]


def read(uri: Any) -> str:
    """Kestra's ``read(uri)``: the content of the internal storage file ``uri`` (e.g.
    ``outputs.<id>.uri`` or ForEachItem's ``taskrun.items``) as text. Only files of internal
    storage are read (never an arbitrary path); a missing or binary file raises."""
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"read() expects an internal storage URI (got {uri!r})")
    if not _READERS:
        raise ValueError("read() needs internal storage (waxflow run / waxflow test set it "
                         "up)")
    return _READERS[0](uri)


# --------------------------------------------------------------------------- analysis
#: the internal filter :func:`_mark_derived` wraps secret-derived expressions in
_DERIVED = "_waxflow_secret_derived"
_SECRET = "secret"
_MAX_DEPTH = 32


def _loads(node: nodes.Node) -> set[str]:
    """Names ``node`` (itself included) reads."""
    names = {n.name for n in node.find_all(nodes.Name) if n.ctx == "load"}
    if isinstance(node, nodes.Name) and node.ctx == "load":
        names.add(node.name)
    return names


def _stores(node: nodes.Node) -> set[str]:
    """Names ``node`` (itself included) binds."""
    names = {n.name for n in node.find_all(nodes.Name) if n.ctx == "store"}
    if isinstance(node, nodes.Name) and node.ctx == "store":
        names.add(node.name)
    return names


def _bindings(tree: nodes.Template) -> Iterator[tuple[set[str], set[str]]]:
    """(names bound, names read to compute them) of every ``set``, ``for`` and ``with``."""
    for node in tree.find_all((nodes.Assign, nodes.AssignBlock, nodes.For, nodes.With)):
        if isinstance(node, nodes.Assign):
            yield _stores(node.target), _loads(node.node)
        elif isinstance(node, nodes.AssignBlock):
            parts: list[nodes.Node] = [*node.body, *([node.filter] if node.filter else [])]
            yield _stores(node.target), set().union(*map(_loads, parts))
        elif isinstance(node, nodes.For):
            yield _stores(node.target), _loads(node.iter)
        elif isinstance(node, nodes.With):
            yield (set().union(*map(_stores, node.targets)),
                   set().union(*map(_loads, node.values)))


def _taint(tree: nodes.Template) -> tuple[set[str], set[str]]:
    """(names that may hold a secret-derived value, names that may hold context data).

    Context data is every name read but not bound by the template (``trigger``, ``loop``,
    ``now``, ...) except ``secret``; a name bound from an expression reading a name of
    either kind is of that kind too (both, possibly). Scopes are ignored: over-approximate.
    """
    bindings = list(_bindings(tree))
    bound: set[str] = set().union(*(b for b, _ in bindings))
    secret = {_SECRET}
    data = _loads(tree) - secret - bound
    changed = True
    while changed:
        changed = False
        for names, reads in bindings:
            for kind in (secret, data):
                if reads & kind and not names <= kind:
                    kind |= names
                    changed = True
    return secret, data


def _constants(tree: nodes.Template) -> tuple[str, ...]:
    """The strings written in the template itself (literals and text between tags)."""
    found = {n.value for n in tree.find_all(nodes.Const) if isinstance(n.value, str)}
    found |= {n.data for n in tree.find_all(nodes.TemplateData)}
    return tuple(sorted(found))


def _mark_derived(tree: nodes.Template, secret: set[str], data: set[str]) -> None:
    """Wrap, in place, every expression of ``tree`` that computes a value from a secret in
    the ``_waxflow_secret_derived`` filter, which registers the value when it is computed.

    Wrapped: filters, calls, attribute and item reads whose input (``x`` of ``x | f``,
    ``x.m()``, ``x[i]``) reads a secret-derived name, and ``~ + - * / // % **`` reading one.
    ``and``/``or``/``if-else`` return an operand as is (operands are wrapped on their own).
    An expression reading no context data (*pure*: its value is the same for every record)
    registers every string in its value, one mixing secrets with record data only its value
    when that is a string; in both cases a string in which a registered secret shows
    already is left out (``"id=" ~ trigger.value.id ~ secret('X')`` is masked by ``X``
    itself), and so is a string written in the template (``{'auth': secret('X')}`` does
    not register ``auth``). So record data on its own never becomes a registered value (it
    is never masked) and the redactor does not grow per record, except for a secret
    *transformed together with* record data (``(secret('X') ~ trigger.value.id) | upper``):
    one value per record.
    """
    constants = _constants(tree)

    def wrap(parent: nodes.Node, field: str, child: nodes.Node) -> nodes.Node:
        visit(child)
        if (isinstance(parent, nodes.Call) and field == "node") or (
                isinstance(parent, nodes.CallBlock) and field == "call"):
            return child  # a callee (a function, not a value) / the call a block needs as is
        if isinstance(child, nodes.Filter | nodes.Getattr | nodes.Getitem | nodes.Call):
            source: nodes.Node | None = child.node
        elif isinstance(child, nodes.Concat) or (
                isinstance(child, nodes.BinExpr) and not isinstance(child, nodes.And | nodes.Or)):
            source = child
        else:
            return child
        if source is None or not _loads(source) & secret:
            return child
        pure = not _loads(child) & data
        return nodes.Filter(child, _DERIVED, [nodes.Const(pure), nodes.Const(constants)], [],
                            None, None, lineno=child.lineno)

    def visit(node: nodes.Node) -> None:
        for field, value in node.iter_fields():
            if isinstance(value, nodes.Node):
                setattr(node, field, wrap(node, field, value))
            elif isinstance(value, list):
                setattr(node, field, [wrap(node, field, v) if isinstance(v, nodes.Node) else v
                                      for v in value])

    visit(tree)


def _register_derived(text: str, constants: tuple[str, ...]) -> None:
    """Register ``text``, a secret-derived string, unless it is one of the template's own
    ``constants`` or a registered secret already shows in it (``"rejected token " ~
    secret('X')`` is masked as ``rejected token ******`` by ``X`` itself: the words around
    it stay readable)."""
    if len(text) >= _MIN_SECRET_LEN and text not in constants and redact(text) == text:
        register_secret(text)


def _register_strings(value: Any, constants: tuple[str, ...], depth: int = 0) -> None:
    """:func:`_register_derived` for every string in ``value`` (dict keys too)."""
    if isinstance(value, str):
        _register_derived(value, constants)
    elif depth < _MAX_DEPTH:
        if isinstance(value, dict):
            for k, v in value.items():
                _register_strings(k, constants, depth + 1)
                _register_strings(v, constants, depth + 1)
        elif isinstance(value, list | tuple | set | frozenset):
            for v in value:
                _register_strings(v, constants, depth + 1)


def _secret_derived(value: Any, pure: bool, constants: tuple[str, ...]) -> Any:
    """The ``_waxflow_secret_derived`` filter: register ``value``, return it unchanged."""
    if pure:
        _register_strings(value, constants)
    elif isinstance(value, str):
        _register_derived(value, constants)
    return value


@dataclass(frozen=True)
class References:
    """What a template reads by a constant name (for checks before a flow starts).

    ``secrets``: names given to ``secret('NAME')``; ``outputs``: task ids read as
    ``outputs.ID`` / ``outputs['ID']``; ``env``: variables read as ``env.NAME`` /
    ``env['NAME']``. A read guarded in the template (``| default(...)``, ``is defined``,
    ``is undefined``, ``'NAME' in env``) and dict methods (``env.get``) are left out.
    """

    secrets: frozenset[str] = frozenset()
    outputs: frozenset[str] = frozenset()
    env: frozenset[str] = frozenset()


def _const_str(node: nodes.Node | None) -> str | None:
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return node.value
    return None


def _key_of(node: nodes.Node | None, root: str) -> str | None:
    """``KEY`` when ``node`` is ``root.KEY`` or ``root['KEY']``."""
    if isinstance(node, nodes.Getattr | nodes.Getitem) and isinstance(node.node, nodes.Name) \
            and node.node.name == root:
        if isinstance(node, nodes.Getattr):
            return None if hasattr(dict, node.attr) else node.attr
        return _const_str(node.arg)
    return None


def _references(tree: nodes.Template) -> References:
    bound = _stores(tree)
    calls = list(tree.find_all(nodes.Call))
    secrets: set[str] = set()
    if _SECRET not in bound:
        for call in calls:
            if isinstance(call.node, nodes.Name) and call.node.name == _SECRET:
                arg = call.args[0] if call.args else next(
                    (kw.value for kw in call.kwargs if kw.key == "name"), None)
                name = _const_str(arg)
                if name is not None:
                    secrets.add(name)
    callees = {id(call.node) for call in calls}

    def keys(root: str) -> frozenset[str]:
        if root in bound:
            return frozenset()
        found: set[str] = set()
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            key = None if id(node) in callees else _key_of(node, root)
            if key is not None:
                found.add(key)
        guarded: set[str | None] = set()
        for check in tree.find_all((nodes.Filter, nodes.Test)):
            if check.name in ("default", "d", "defined", "undefined"):
                guarded.add(_key_of(check.node, root))
        for compare in tree.find_all(nodes.Compare):
            if any(op.op in ("in", "notin") and isinstance(op.expr, nodes.Name)
                   and op.expr.name == root for op in compare.ops):
                guarded.add(_const_str(compare.expr))
        return frozenset(found - guarded)

    return References(frozenset(secrets), keys("outputs"), keys("env"))


# --------------------------------------------------------------------------- templates
class Template(ABC):
    """A compiled template. ``render`` is safe to call from many threads at once."""

    __slots__ = ()
    source: Any
    #: rendered without Jinja (a constant, a plain path, or :mod:`waxflow.template_direct`)
    DIRECT: ClassVar[bool] = True

    @abstractmethod
    def render(self, ctx: Mapping[str, Any]) -> Any:
        """Render against ``ctx``; raises :class:`ExpressionError` on failure."""


class _Constant(Template):
    __slots__ = ("source",)

    def __init__(self, source: Any) -> None:
        self.source = source

    def render(self, ctx: Mapping[str, Any]) -> Any:
        return self.source


class _Jinja(Template):
    __slots__ = ("_constants", "_env", "_globals", "_pure_secret", "_root", "source")
    DIRECT = False

    def __init__(self, source: str, compiled: jinja2.Template, globals_: dict[str, Any],
                 pure_secret: bool = False, constants: tuple[str, ...] = ()) -> None:
        self.source = source
        self._env = compiled.environment
        self._root = compiled.root_render_func
        self._globals = globals_
        # reads secrets and no context data: every string of its result is secret-derived
        self._pure_secret = pure_secret
        self._constants = constants

    def render(self, ctx: Mapping[str, Any]) -> Any:
        context = Context(self._env, {**self._globals, **ctx}, None, {})
        try:
            out = _concat(self._root(context))
        except Exception as exc:
            raise ExpressionError(self.source, _reason(exc)) from None
        if self._pure_secret:
            _register_strings(out, self._constants)
        return out


#: a template that is one plain path, ``{{ trigger.value.n }}``
_PATH = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*\}\}")
#: names Jinja reads as constants, not variables
_CONSTANT_NAMES = frozenset({"true", "false", "none", "True", "False", "None"})


class _Path(Template):
    """``{{ a.b.c }}`` rendered by dict look-ups (what :meth:`_Environment.getattr` does
    first); anything else (a root not in the variables, a step that is not a dict holding
    the key, an undefined value) is rendered by its Jinja template, errors included: the
    result is always the Jinja one."""

    __slots__ = ("_names", "_root", "_slow", "source")

    def __init__(self, source: str, names: tuple[str, ...], slow: Template) -> None:
        self.source = source
        self._root = names[0]
        self._names = names[1:]
        self._slow = slow

    def render(self, ctx: Mapping[str, Any]) -> Any:
        obj = ctx.get(self._root, _NOTHING) if type(ctx) is dict else _NOTHING
        if obj is _NOTHING:
            return self._slow.render(ctx)
        for name in self._names:
            if isinstance(obj, dict) and name in obj:
                obj = obj[name]
            else:
                return self._slow.render(ctx)
        if isinstance(obj, jinja2.Undefined):
            return self._slow.render(ctx)
        return obj


class _Direct(Template):
    """A simple template (:mod:`waxflow.template_direct`: paths, arithmetic, ``dict(...)``,
    plain filters, text around them) evaluated from its syntax tree; where that cannot vouch
    for the value, rendered by its Jinja template: the result is always the Jinja one."""

    __slots__ = ("_get", "_slow", "source")

    def __init__(self, source: str, get: Callable[[Mapping[str, Any]], Any],
                 slow: Template) -> None:
        self.source = source
        self._get = get
        self._slow = slow

    def render(self, ctx: Mapping[str, Any]) -> Any:
        if type(ctx) is dict:
            try:
                return self._get(ctx)
            except Fallback:
                pass
        return self._slow.render(ctx)


class _Structure(Template):
    """A dict or list whose strings are templates; renders to a fresh container each time."""

    __slots__ = ("_items", "source")
    DIRECT = False  # (its parts may be Jinja)

    def __init__(self, source: Any, items: list[tuple[Any, Template]]) -> None:
        self.source = source
        self._items = items

    def render(self, ctx: Mapping[str, Any]) -> Any:
        if isinstance(self.source, dict):
            return {
                (k.render(ctx) if isinstance(k, Template) else k): v.render(ctx)
                for k, v in self._items
            }
        return [v.render(ctx) for _, v in self._items]


class Expressions:
    """The expressions of one flow: one sandboxed environment, one compile cache."""

    def __init__(
        self, secrets: Secrets | None = None, extra_globals: Mapping[str, Any] | None = None
    ) -> None:
        self.secrets = secrets if secrets is not None else Secrets()
        env = _Environment(undefined=jinja2.StrictUndefined, autoescape=False)
        env.filters["tojson"] = tojson
        env.filters["fromjson"] = fromjson
        # Kestra's (Pebble) spellings
        env.filters["jq"] = jq
        env.filters["json"] = env.filters["toJson"] = tojson
        env.filters["fromJson"] = fromjson
        env.globals["fromJson"] = fromjson
        env.filters[_DERIVED] = _secret_derived
        env.globals["secret"] = self.secrets.get
        env.globals["now"] = now
        # Kestra's (Pebble) dates, strings, tests and null
        env.filters["date"] = date_filter
        env.filters["dateAdd"] = date_add
        env.filters["timestamp"] = _timestamp(1)
        env.filters["timestampMilli"] = _timestamp(1_000)
        env.filters["timestampMicro"] = _timestamp(1_000_000)
        env.filters["timestampNano"] = _timestamp(1_000_000_000)
        env.filters["slugify"] = slugify
        env.filters["default"] = env.filters["d"] = default_filter
        env.tests["null"] = env.tests["none"]
        env.tests["empty"] = _is_empty
        env.globals["null"] = None
        render = self._render_function

        @jinja2.pass_context
        def render_function(context: Context, template: Any, recursive: bool = True) -> Any:
            return render(context, template, recursive)

        env.globals["render"] = render_function
        env.globals["read"] = read
        env.globals.update(extra_globals or {})
        self._env = env
        self._globals = dict(env.globals)
        self._known = ALLOWED_ROOTS | frozenset(self._globals)
        self._cache: dict[str, Template] = {}
        self._lock = threading.Lock()

    def _render_function(self, context: Context, template: Any, recursive: bool = True
                         ) -> Any:
        """Kestra's ``render(template, recursive=true)``: ``template`` (text holding an
        expression, typically a ``vars`` value) rendered with the current variables, again
        while the result still holds one (``recursive``, at most :data:`RENDER_DEPTH`
        times). It is not cached. Text that is one of the flow's ``variables`` was written
        in the flow file: its first pass sees everything the flow's own expressions do.
        Any other text may come from a record, as may what a pass renders to, so it reads
        the execution's data (``trigger``, ``outputs``, ``inputs``, ``vars``...) and
        nothing of the process: ``secret()``, ``read()`` (another execution's files) and
        ``env`` are not available in it, and a result holding a secret's value (a SECRET
        input, a secret-derived output) is refused."""
        if not isinstance(template, str):
            raise ValueError("render() expects text (a template)")
        everything = context.get_all()
        variables = {k: v for k, v in everything.items() if k not in _NOT_IN_RENDER}
        variables.update(_NOT_IN_RENDER)
        trusted = _written_in(template, everything.get("vars"))
        out: Any = template
        for depth in range(RENDER_DEPTH if recursive else 1):
            if not (isinstance(out, str) and any(m in out for m in _MARKERS)):
                break
            try:
                compiled = self._env.from_string(out)
            except jinja2.TemplateSyntaxError as exc:
                raise ValueError(f"render(): {_syntax_message(out, exc)}") from None
            full = trusted and depth == 0
            ctx = Context(self._env, dict(everything) if full else variables, None, {})
            out = _concat(compiled.root_render_func(ctx))
            shown = out if isinstance(out, str) else tojson(out)
            if not full and redact(shown) != shown:
                raise SecretError("render(): the text rendered to a secret's value, which "
                                  "text given to render() may not read")
        return out

    def compile(self, source: str) -> Template:
        """The compiled template for ``source``; the same string compiles once.

        Only pass strings written in the flow file. Raises :class:`ExpressionError` for
        invalid templates (use :meth:`check` first for messages fit for users).
        """
        found = self._cache.get(source)
        if found is not None:
            return found
        with self._lock:
            found = self._cache.get(source)
            if found is None:
                found = self._compile(source)
                self._cache[source] = found
            return found

    def _compile(self, source: str) -> Template:
        if not any(m in source for m in _MARKERS):
            return _Constant(source)
        try:
            tree = self._env.parse(source)
            _default_guard(tree)
            pure_secret = False
            constants: tuple[str, ...] = ()
            if _SECRET in _loads(tree):
                secret, data = _taint(tree)
                pure_secret, constants = not _loads(tree) & data, _constants(tree)
                _mark_derived(tree, secret, data)
                tree.set_environment(self._env)
            compiled = self._env.from_string(tree)
        except jinja2.TemplateSyntaxError as exc:
            raise ExpressionError(source, _syntax_message(source, exc)) from None
        jinja = _Jinja(source, compiled, self._globals, pure_secret, constants)
        path = _PATH.fullmatch(source)
        if path is not None and not pure_secret:
            names = tuple(path.group(1).split("."))
            if (names[0] not in _CONSTANT_NAMES and names[0] not in self._globals
                    and names[0] not in SPECIAL_NAMES):
                return _Path(source, names, jinja)
        if not pure_secret and _SECRET not in _loads(tree):
            get = direct(tree, self._env, self._globals)
            if get is not None:
                return _Direct(source, get, jinja)
        return jinja

    def compile_value(self, value: Any) -> Template:
        """Compile every string (dict keys too) inside a JSON-like value, once.

        Rendering the result equals :meth:`render_value` on ``value`` without the per-call
        cache look-ups.
        """
        if isinstance(value, str):
            return self.compile(value)
        if isinstance(value, dict):
            items = [
                (self.compile(k) if isinstance(k, str) else k, self.compile_value(v))
                for k, v in value.items()
            ]
            return _Structure(value, items)
        if isinstance(value, list | tuple):
            return _Structure(list(value), [(None, self.compile_value(v)) for v in value])
        return _Constant(value)

    def render_value(self, value: Any, ctx: Mapping[str, Any]) -> Any:
        """Render strings inside dicts (keys too) and lists; other values are returned as is.

        A templated key renders to its native value (keep keys as text: ``"{{ x }}"``).
        Lists and tuples come back as new lists, dicts as new dicts.
        """
        if isinstance(value, str):
            return self.compile(value).render(ctx)
        if isinstance(value, dict):
            return {
                (self.compile(k).render(ctx) if isinstance(k, str) else k): self.render_value(
                    v, ctx
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.render_value(v, ctx) for v in value]
        return value

    def references(self, source: str) -> References:
        """The secrets, task outputs and environment variables ``source`` reads by constant
        name (see :class:`References`); empty for constants and templates that do not parse
        (:meth:`check` reports those)."""
        if not any(m in source for m in _MARKERS):
            return References()
        try:
            tree = self._env.parse(source)
        except jinja2.TemplateSyntaxError:
            return References()
        return _references(tree)

    def check(self, source: str) -> list[str]:
        """Static problems of ``source`` for ``waxflow validate``; [] when it is fine.

        Reports syntax errors (with the template's own line when it has several), unknown
        filters/tests, ``include``/``import``/``extends`` (no templates to load), and root
        variables that are neither in :data:`ALLOWED_ROOTS`, nor globals, nor bound by the
        template itself.
        """
        if not any(m in source for m in _MARKERS):
            return []
        try:
            tree = self._env.parse(source)
            undeclared = meta.find_undeclared_variables(tree)  # also finds unknown filters
        except jinja2.TemplateSyntaxError as exc:
            return [_syntax_message(source, exc)]
        problems = [
            f"'{type(node).__name__.lower()}' is not available in expressions"
            for node in tree.find_all(
                (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)
            )
        ]
        for name in sorted(undeclared - self._known):
            close = difflib.get_close_matches(name, sorted(self._known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(
                f"unknown variable {name!r} ({hint}known: {', '.join(sorted(ALLOWED_ROOTS))})"
            )
        for call in tree.find_all(nodes.Filter):
            if call.name == "jq" and call.args and isinstance(call.args[0], nodes.Const):
                try:
                    jq_steps(str(call.args[0].value))
                except ValueError as exc:
                    problems.append(str(exc))
        if not problems:
            try:
                self.compile(source)
            except ExpressionError as exc:
                problems.append(exc.reason)
        return problems


def _no_secret_in_render(*_args: Any, **_kwargs: Any) -> Any:
    raise SecretError("secret() is not available in text given to render(): read the "
                      "secret in the flow file's own expression")


def _written_in(text: str, variables: Any) -> bool:
    """Whether ``text`` is one of the (nested) string values of the flow's ``variables``."""
    if isinstance(variables, str):
        return variables == text
    if isinstance(variables, Mapping):
        return any(_written_in(text, v) for v in variables.values())
    if isinstance(variables, list | tuple):
        return any(_written_in(text, v) for v in variables)
    return False


def _no_read_in_render(*_args: Any, **_kwargs: Any) -> Any:
    raise ValueError("read() is not available in text given to render(): read the file in "
                     "the flow file's own expression")


class _NoEnvInRender:
    """``env`` in text given to render(): every read is refused."""

    def __getattr__(self, name: str) -> Any:
        raise ValueError("env is not available in text given to render(): read the "
                         "variable in the flow file's own expression")

    __getitem__ = __getattr__

    def __contains__(self, name: object) -> bool:
        return False


#: what text given to render() sees instead of the process's secrets, files and environment
_NOT_IN_RENDER: dict[str, Any] = {"secret": _no_secret_in_render, "read": _no_read_in_render,
                                  "env": _NoEnvInRender()}


def _default_guard(tree: nodes.Template) -> None:
    """``x | default(y)``: ``x`` undefined at any depth (``a.b.c`` without ``a.b``) gives
    ``y``, as in Pebble (Jinja's strict undefined would raise before the filter runs)."""
    for node in tree.find_all(nodes.Filter):
        if node.name in ("default", "d") and node.node is not None \
                and not isinstance(node.node, nodes.Const):
            node.node = Coalesce(node.node, nodes.Const(None), lineno=node.lineno)


def _syntax_message(source: str, exc: jinja2.TemplateSyntaxError) -> str:
    where = f" on line {exc.lineno} of the expression" if "\n" in source.strip() else ""
    kind = "error" if isinstance(exc, jinja2.TemplateAssertionError) else "syntax error"
    return f"{kind}{where}: {exc.message}"


# --------------------------------------------------------------------------- start-time values
#: what a template rendered once when the job starts (client ``properties``, Consume's
#: ``topic``/``groupId``) may read: never record data
STATIC_ROOTS = frozenset({"env", "secret", "now"})

_static: Expressions | None = None
_static_lock = threading.Lock()


def env_vars() -> dict[str, str]:
    """``env.*``: the process environment minus the variables that carry secrets."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WAXFLOW_SECRET_")}


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return any(m in value for m in _MARKERS)
    if isinstance(value, dict):
        return any(_has_template(k) or _has_template(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_template(v) for v in value)
    return False


def render_static(value: Any) -> Any:
    """``value`` with its templates rendered for the whole run: only ``env.*``, ``secret()``
    and ``now()`` are available (``waxflow validate`` refuses anything else, see
    :func:`check_static`). Values without templates come back as they are; secrets read
    here are registered with the redactor, so they are masked in every log and error."""
    if not _has_template(value):
        return value
    global _static
    with _static_lock:
        if _static is None:
            _static = Expressions()
        exprs = _static
    return exprs.render_value(value, {"env": env_vars()})


def check_static(exprs: Expressions, source: str) -> list[str]:
    """Problems of a start-time template (see :func:`render_static`): those of
    :meth:`Expressions.check`, plus any variable other than ``env``/``secret``/``now``."""
    problems = exprs.check(source)
    if problems or not any(m in source for m in _MARKERS):
        return problems
    used = meta.find_undeclared_variables(exprs._env.parse(source))
    for name in sorted(used - STATIC_ROOTS):
        problems.append(f"{name!r} is not available here: this value is rendered once when "
                        "the job starts, with env.* and secret() only (never record data)")
    return problems

