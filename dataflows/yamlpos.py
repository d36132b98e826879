"""YAML loading that remembers where every value came from.

:func:`load_yaml` composes the document with PyYAML's safe composer and builds plain Python
values (dict, list, str, int, float, bool, None) itself, recording the 1-based line and column
of every value and every mapping key under its path, e.g. ``("tasks", 1, "retry", "interval")``.

Scalars are typed with the YAML 1.2 core schema (as Kestra's YAML parser does), not PyYAML's
YAML 1.1 defaults: ``yes``/``no``/``on``/``off`` stay strings, ``12:30`` is not a base-60
integer and dates stay strings. Only the standard tags ``!!str !!int !!float !!bool !!null
!!map !!seq`` are accepted; merge keys (``<<``), other tags, duplicate keys and non-scalar
keys are refused with a :class:`~waxflow.errors.FlowError` naming the position.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from waxflow.errors import FlowError, Problem, format_path

__all__ = ["PositionMap", "load_yaml"]

Path = tuple[Hashable, ...]
Position = tuple[int, int]

_T = "tag:yaml.org,2002:"
_NULL = re.compile(r"(?:~|null|Null|NULL|)\Z")
_BOOL = re.compile(r"(?:true|True|TRUE|false|False|FALSE)\Z")
_INT = re.compile(r"(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)\Z")
_FLOAT = re.compile(
    r"(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z"
)
_MAX_NODES = 200_000  # after alias expansion; guards against "billion laughs" documents


class _Loader(yaml.SafeLoader):
    """SafeLoader whose implicit scalar typing follows the YAML 1.2 core schema."""

    yaml_implicit_resolvers: dict[Any, Any] = {}


for _tag, _regex, _first in (
    ("null", _NULL, ["~", "n", "N", ""]),
    ("bool", _BOOL, list("tTfF")),
    ("int", _INT, list("-+0123456789")),
    ("float", _FLOAT, list("-+.0123456789")),
):
    _Loader.add_implicit_resolver(_T + _tag, _regex, _first)


class PositionMap:
    """Positions (1-based line, column) of the values and keys of one loaded document."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._values: dict[Path, Position] = {}
        self._keys: dict[Path, Position] = {}

    def locate(self, path: Sequence[Hashable]) -> Position | None:
        """Position of the value at ``path``, or of its longest existing prefix.

        So a problem about a missing field points at the enclosing mapping. Returns None only
        for an empty document.
        """
        p = tuple(path)
        for end in range(len(p), -1, -1):
            found = self._values.get(p[:end])
            if found is not None:
                return found
        return None

    def locate_key(self, path: Sequence[Hashable]) -> Position | None:
        """Position of the mapping key whose value is at ``path`` (e.g. for "unknown field").

        Falls back to :meth:`locate` when ``path`` does not end at a recorded key.
        """
        return self._keys.get(tuple(path)) or self.locate(path)

    def problem(self, path: Sequence[Hashable], message: str, *, at_key: bool = False) -> Problem:
        """A :class:`Problem` for ``path`` positioned by :meth:`locate` (or :meth:`locate_key`)."""
        pos = self.locate_key(path) if at_key else self.locate(path)
        line, col = pos if pos is not None else (None, None)
        return Problem(self.file, line, col, format_path(path), message)

    def __len__(self) -> int:
        return len(self._values)

    def _record(self, path: Path, node: Node, *, key: bool = False) -> None:
        mark = node.start_mark
        (self._keys if key else self._values)[path] = (mark.line + 1, mark.column + 1)


def load_yaml(text: str, file: str) -> tuple[Any, PositionMap]:
    """Parse one YAML document into plain Python values plus their positions.

    Raises :class:`FlowError` for syntax errors (``file:line:col`` and the parser's problem),
    several documents in one file, unsupported tags, duplicate or non-scalar keys, merge keys
    and documents that expand past 200,000 nodes through aliases. An empty document loads
    as None.
    """
    positions = PositionMap(file)
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise FlowError(_syntax_problem(file, exc)) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = exc.character
        code = ord(char) if isinstance(char, str) else int(char)
        msg = f"unacceptable character #x{code:04x}: {exc.reason}"
        raise FlowError(Problem(file, line, col, "", msg)) from None
    except RecursionError:
        raise FlowError(Problem(file, None, None, "", "YAML nested too deeply")) from None
    if root is None:
        return None, positions
    builder = _Builder(positions)
    try:
        value = builder.build(root, ())
    except _Abort:
        raise FlowError(builder.problems) from None
    except RecursionError:
        raise FlowError(Problem(file, None, None, "", "YAML nested too deeply")) from None
    if builder.problems:
        raise FlowError(builder.problems)
    return value, positions


def _syntax_problem(file: str, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    message = exc.problem or exc.context or "invalid YAML"
    if exc.problem and exc.context:
        message += f" ({exc.context}"
        if exc.context_mark is not None and exc.context_mark is not mark:
            message += f" on line {exc.context_mark.line + 1}"
        message += ")"
    if mark is None:
        return Problem(file, None, None, "", message)
    return Problem(file, mark.line + 1, mark.column + 1, "", message)


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_T) :] if tag.startswith(_T) else tag


class _Builder:
    """Builds plain values from composed nodes, recording positions and collecting problems."""

    def __init__(self, positions: PositionMap) -> None:
        self.positions = positions
        self.problems: list[Problem] = []
        self._active: set[int] = set()  # nodes being built: detects recursive aliases
        self._count = 0

    def _fail(self, node: Node, path: Path, message: str) -> None:
        mark = node.start_mark
        self.problems.append(
            Problem(self.positions.file, mark.line + 1, mark.column + 1, format_path(path), message)
        )

    def build(self, node: Node, path: Path) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            self._fail(node, path, f"document expands to more than {_MAX_NODES} values")
            raise _Abort
        self.positions._record(path, node)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._active:
            self._fail(node, path, "recursive YAML alias")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode) and node.tag == _T + "seq":
                return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
            if isinstance(node, MappingNode) and node.tag == _T + "map":
                return self._mapping(node, path)
            self._fail(node, path, f"unsupported YAML tag {_tag_name(node.tag)!r}")
            return None
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: MappingNode, path: Path) -> dict[Hashable, Any]:
        result: dict[Hashable, Any] = {}
        first_line: dict[Hashable, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self._fail(key_node, path, "mapping keys must be plain values, not lists or maps")
                continue
            if key_node.value == "<<" and key_node.style is None:
                self._fail(key_node, path, "YAML merge keys (<<) are not supported")
                continue
            key = self._scalar(key_node, path)
            if key is None:
                self._fail(key_node, path, "mapping keys must not be null")
                continue
            if key in result:
                self._fail(
                    key_node,
                    (*path, key),
                    f"duplicate key {key!r} (first defined on line {first_line[key]})",
                )
                continue
            first_line[key] = key_node.start_mark.line + 1
            self.positions._record((*path, key), key_node, key=True)
            result[key] = self.build(value_node, (*path, key))
        return result

    def _scalar(self, node: ScalarNode, path: Path) -> Any:
        tag, text = node.tag, node.value
        if tag == _T + "str":
            return text
        if tag == _T + "null" and _NULL.match(text):
            return None
        if tag == _T + "bool" and _BOOL.match(text):
            return text.lower() == "true"
        if tag == _T + "int" and _INT.match(text):
            return int(text, 0) if text[:2] in ("0o", "0x") else int(text, 10)
        if tag == _T + "float" and (_FLOAT.match(text) or _INT.match(text)):
            lowered = text.lower()
            if lowered.endswith(".nan"):
                return math.nan
            if lowered.endswith(".inf"):
                return -math.inf if text.startswith("-") else math.inf
            return float(int(text, 0)) if text[:2] in ("0o", "0x") else float(text)
        if tag in (_T + "null", _T + "bool", _T + "int", _T + "float"):
            self._fail(node, path, f"{text!r} is not a valid {_tag_name(tag)} value")
        else:
            self._fail(node, path, f"unsupported YAML tag {_tag_name(tag)!r}")
        return None


class _Abort(Exception):
    """Internal: stop building after a fatal problem (already recorded)."""
