"""Simple templates evaluated straight from their Jinja syntax tree, with Jinja's result.

A template such as ``{{ dict(trigger.value, total=trigger.value.amount * trigger.value.qty) }}``
or ``order {{ trigger.value.id }} for {{ trigger.value.customer }}`` rendered through Jinja's
sandbox costs ~10 µs (a ``Context``, the sandbox's ``call`` checks, generator output); most
per-record templates only read paths, do arithmetic and build a dict. :func:`direct` turns
such a tree into nested Python closures.

Guarantee: a direct evaluator returns exactly what the Jinja template returns, or raises
:class:`Fallback`, and then the caller renders the Jinja template (which gives Jinja's value
or Jinja's error). It evaluates nothing with side effects — dict and list reads, arithmetic
on ``int``/``float``, comparisons and truth tests of plain JSON-like values, ``dict(...)`` and
filters that take no Jinja context — so evaluating it and then falling back is the same as
rendering once. Anything it is not sure of (a missing key, a value that is not a dict, an
undefined value, an exception, an operand of another type) falls back. Property-tested
against Jinja (tests/unit/test_template_direct.py).

Supported nodes: names, ``a.b``, ``a['b']``/``a[0]`` (constant subscripts), constants, list
/ tuple / dict literals, ``+ - * / // %`` and unary ``- +`` on numbers (``+`` also on two
strings), ``~``, comparisons, ``and``/``or``/``not``, ``x if c else y``, filters without a
context argument (constant or direct arguments), and the global ``dict(...)``. Several
outputs with text between them join as text, as the template would.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.nodes import EvalContext
from jinja2.utils import _PassArg

Getter = Callable[[Mapping[str, Any]], Any]


class Fallback(Exception):
    """The direct evaluation cannot vouch for this value: render with Jinja instead."""


_FALLBACK = Fallback()
_MISSING: Any = object()
_UNDEFINED = jinja2.Undefined
#: types whose comparisons and truth tests are pure and Python's (what Jinja runs)
_PLAIN = (int, float, str, bool, type(None), list, dict, tuple)
_SCALARS = (int, float, str, bool, type(None))
#: names Jinja's generated code binds itself (``self`` is the template reference...)
SPECIAL_NAMES = frozenset({"self", "loop", "caller", "varargs", "kwargs", "super"})


def _fail(_ctx: Mapping[str, Any]) -> Any:
    raise _FALLBACK


def _checked(value: Any) -> Any:
    if isinstance(value, _UNDEFINED):
        raise _FALLBACK
    return value


_ARITH: dict[type[nodes.Node], Callable[[Any, Any], Any]] = {
    nodes.Add: operator.add, nodes.Sub: operator.sub, nodes.Mul: operator.mul,
    nodes.Div: operator.truediv, nodes.FloorDiv: operator.floordiv, nodes.Mod: operator.mod,
}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "lteq": operator.le,
    "gt": operator.gt, "gteq": operator.ge,
    "in": lambda a, b: a in b, "notin": lambda a, b: a not in b,
}


class _Builder:
    """Builds the closures of one tree; ``None`` from :meth:`build` means "not direct"."""

    def __init__(self, env: jinja2.Environment, globals_: Mapping[str, Any]) -> None:
        self.env = env
        self.globals = globals_

    def build(self, node: nodes.Node) -> Getter | None:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            return None
        out: Getter | None = method(node)
        return out

    def _all(self, items: Sequence[nodes.Node]) -> list[Getter] | None:
        built: list[Getter] = []
        for item in items:
            got = self.build(item)
            if got is None:
                return None
            built.append(got)
        return built

    # -- values ------------------------------------------------------------------------------
    def _Const(self, node: nodes.Const) -> Getter:
        value = node.value
        if isinstance(value, _SCALARS):
            return lambda _ctx: value
        # a folded literal (``[1, 2]``): Jinja builds a new one per render
        return lambda _ctx: copy.deepcopy(value)

    def _Name(self, node: nodes.Name) -> Getter | None:
        if node.ctx != "load" or node.name in SPECIAL_NAMES:
            return None
        name = node.name
        default = self.globals.get(name, _MISSING)

        def get(ctx: Mapping[str, Any]) -> Any:
            value = ctx.get(name, default)
            if value is _MISSING or isinstance(value, _UNDEFINED):
                raise _FALLBACK
            return value

        return get

    def _path(self, node: nodes.Getattr | nodes.Getitem) -> Getter | None:
        """A chain of ``.name``/``["name"]`` look-ups on a variable (``trigger.value.n``)
        as one getter: the same steps as the getters of its parts, without a call per part
        (an intermediate value that is missing, Undefined or not a dict: Jinja decides)."""
        names: list[str] = []
        top: nodes.Node = node
        while True:
            if isinstance(top, nodes.Getattr):
                names.append(top.attr)
            elif (isinstance(top, nodes.Getitem) and isinstance(top.arg, nodes.Const)
                  and type(top.arg.value) is str):
                names.append(top.arg.value)
            else:
                break
            top = top.node
        if (not names or not isinstance(top, nodes.Name) or top.ctx != "load"
                or top.name in SPECIAL_NAMES):
            return None
        names.reverse()
        name = top.name
        default = self.globals.get(name, _MISSING)
        keys = tuple(names)

        def get(ctx: Mapping[str, Any]) -> Any:
            obj = ctx.get(name, default)  # (_MISSING and Undefined are not dicts)
            for key in keys:
                if (type(obj) is dict or isinstance(obj, dict)) and key in obj:
                    obj = obj[key]
                else:
                    raise _FALLBACK
            if isinstance(obj, _UNDEFINED):
                raise _FALLBACK
            return obj

        return get

    def _Getattr(self, node: nodes.Getattr) -> Getter | None:
        path = self._path(node)
        if path is not None:
            return path
        inner = self.build(node.node)
        if inner is None:
            return None
        attr = node.attr

        def get(ctx: Mapping[str, Any]) -> Any:
            obj = inner(ctx)
            # what _Environment.getattr does first (anything else: the sandbox's look-up)
            if isinstance(obj, dict) and attr in obj:
                return _checked(obj[attr])
            raise _FALLBACK

        return get

    def _Getitem(self, node: nodes.Getitem) -> Getter | None:
        path = self._path(node)
        if path is not None:
            return path
        inner = self.build(node.node)
        if inner is None or not isinstance(node.arg, nodes.Const):
            return None
        key = node.arg.value
        if type(key) is str:
            def get_key(ctx: Mapping[str, Any]) -> Any:
                obj = inner(ctx)
                if isinstance(obj, dict) and key in obj:
                    return _checked(obj[key])
                raise _FALLBACK

            return get_key
        if type(key) is not int:
            return None

        def get_index(ctx: Mapping[str, Any]) -> Any:
            obj = inner(ctx)
            if type(obj) is list and -len(obj) <= key < len(obj):
                return _checked(obj[key])
            raise _FALLBACK

        return get_index

    def _List(self, node: nodes.List) -> Getter | None:
        items = self._all(node.items)
        if items is None:
            return None
        return lambda ctx: [g(ctx) for g in items]

    def _Tuple(self, node: nodes.Tuple) -> Getter | None:
        items = self._all(node.items)
        if items is None or node.ctx != "load":
            return None
        return lambda ctx: tuple(g(ctx) for g in items)

    def _Dict(self, node: nodes.Dict) -> Getter | None:
        keys = self._all([p.key for p in node.items])
        values = self._all([p.value for p in node.items])
        if keys is None or values is None:
            return None
        pairs = list(zip(keys, values, strict=True))
        return lambda ctx: {k(ctx): v(ctx) for k, v in pairs}

    # -- operators ---------------------------------------------------------------------------
    def _binary(self, node: nodes.BinExpr) -> Getter | None:
        left, right = self.build(node.left), self.build(node.right)
        fn = _ARITH[type(node)]
        if left is None or right is None:
            return None
        strings = isinstance(node, nodes.Add)

        def get(ctx: Mapping[str, Any]) -> Any:
            a, b = left(ctx), right(ctx)
            ta, tb = type(a), type(b)
            if (ta is int or ta is float) and (tb is int or tb is float):
                try:
                    return fn(a, b)
                except ArithmeticError:  # Jinja's error, from Jinja
                    raise _FALLBACK from None
            if strings and ta is str and tb is str:
                return a + b
            raise _FALLBACK

        return get

    _Add = _Sub = _Mul = _Div = _FloorDiv = _Mod = _binary

    def _unary(self, node: nodes.UnaryExpr) -> Getter | None:
        inner = self.build(node.node)
        if inner is None:
            return None
        negate = isinstance(node, nodes.Neg)

        def get(ctx: Mapping[str, Any]) -> Any:
            value = inner(ctx)
            t = type(value)
            if t is int or t is float:
                return -value if negate else +value
            raise _FALLBACK

        return get

    _Neg = _Pos = _unary

    def _Not(self, node: nodes.Not) -> Getter | None:
        inner = self.build(node.node)
        if inner is None:
            return None
        return lambda ctx: not _plain(inner(ctx))

    def _And(self, node: nodes.And) -> Getter | None:
        left, right = self.build(node.left), self.build(node.right)
        if left is None or right is None:
            return None
        return lambda ctx: _plain(left(ctx)) and _plain(right(ctx))

    def _Or(self, node: nodes.Or) -> Getter | None:
        left, right = self.build(node.left), self.build(node.right)
        if left is None or right is None:
            return None
        return lambda ctx: _plain(left(ctx)) or _plain(right(ctx))

    def _CondExpr(self, node: nodes.CondExpr) -> Getter | None:
        if node.expr2 is None:  # no else: Jinja's undefined
            return None
        test, yes, no = self.build(node.test), self.build(node.expr1), self.build(node.expr2)
        if test is None or yes is None or no is None:
            return None
        return lambda ctx: yes(ctx) if _plain(test(ctx)) else no(ctx)

    def _Compare(self, node: nodes.Compare) -> Getter | None:
        first = self.build(node.expr)
        ops = [(_COMPARE.get(o.op), self.build(o.expr)) for o in node.ops]
        if first is None or any(f is None or g is None for f, g in ops):
            return None

        def get(ctx: Mapping[str, Any]) -> Any:
            left = _plain(first(ctx))
            for fn, right_of in ops:
                right = _plain(right_of(ctx))  # type: ignore[misc]
                try:
                    ok = fn(left, right)  # type: ignore[misc]
                except TypeError:  # e.g. 1 < "a": Jinja's error, from Jinja
                    raise _FALLBACK from None
                if not ok:
                    return ok
                left = right
            return ok

        return get

    def _Concat(self, node: nodes.Concat) -> Getter | None:
        parts = self._all(node.nodes)
        if parts is None:
            return None

        def get(ctx: Mapping[str, Any]) -> str:
            return "".join([str(_plain(p(ctx))) for p in parts])

        return get

    # -- calls -------------------------------------------------------------------------------
    def _arguments(self, node: nodes.Call | nodes.Filter
                   ) -> tuple[list[Getter], list[tuple[str, Getter]]] | None:
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            return None
        args = self._all(node.args)
        values = self._all([k.value for k in node.kwargs])
        names = [str(k.key) for k in node.kwargs]
        if args is None or values is None or len(set(names)) != len(names):
            return None
        return args, list(zip(names, values, strict=True))

    def _Call(self, node: nodes.Call) -> Getter | None:
        # only the global dict(...): what the sandbox's call() ends in for it
        if not (isinstance(node.node, nodes.Name) and node.node.name == "dict"
                and self.globals.get("dict") is dict):
            return None
        built = self._arguments(node)
        if built is None or len(built[0]) > 1:
            return None
        args, kwargs = built
        base = args[0] if args else None

        def get(ctx: Mapping[str, Any]) -> dict[Any, Any]:
            if ctx.get("dict", dict) is not dict:  # a variable named dict shadows it
                raise _FALLBACK
            out: dict[Any, Any]
            if base is None:
                out = {}
            else:
                first = base(ctx)
                if type(first) is not dict:
                    raise _FALLBACK
                out = dict(first)
            for name, value in kwargs:
                out[name] = value(ctx)
            return out

        return get

    def _Filter(self, node: nodes.Filter) -> Getter | None:
        func = self.env.filters.get(node.name)
        if func is None or node.node is None:
            return None
        pass_arg = _PassArg.from_obj(func)
        lead: tuple[Any, ...]
        if pass_arg is None:
            lead = ()
        elif pass_arg is _PassArg.environment:
            lead = (self.env,)
        elif pass_arg is _PassArg.eval_context:
            lead = (EvalContext(self.env),)
        else:  # the context: not here
            return None
        inner = self.build(node.node)
        built = self._arguments(node)
        if inner is None or built is None:
            return None
        args, kwargs = built

        def get(ctx: Mapping[str, Any]) -> Any:
            value = inner(ctx)
            positional = [a(ctx) for a in args]
            named = {k: v(ctx) for k, v in kwargs}
            try:
                out = func(*lead, value, *positional, **named)
            except Exception:  # Jinja's error, from Jinja
                raise _FALLBACK from None
            return _checked(out)

        return get


def _plain(value: Any) -> Any:
    """``value`` when its truth and comparisons are Python's own (JSON-like types)."""
    if isinstance(value, _PLAIN):
        return value
    raise _FALLBACK


def direct(tree: nodes.Template, env: jinja2.Environment,
           globals_: Mapping[str, Any]) -> Getter | None:
    """The direct evaluator of ``tree`` (parsed by ``env``, rendered with ``globals_`` under
    the variables), or None when it holds anything not supported (module doc). The
    evaluator raises :class:`Fallback` where only Jinja can say."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    builder = _Builder(env, globals_)
    parts: list[Getter] = []
    texts: list[str | None] = []
    for child in tree.body[0].nodes:
        if isinstance(child, nodes.TemplateData):
            texts.append(child.data)
            parts.append(_fail)  # never called
            continue
        built = builder.build(child)
        if built is None:
            return None
        texts.append(None)
        parts.append(built)
    if len(parts) == 1:
        only = parts[0]
        if texts[0] is not None:
            return None  # plain text: a constant already
        return only
    pieces = list(zip(texts, parts, strict=True))

    def join(ctx: Mapping[str, Any]) -> str:
        return "".join([text if text is not None else str(_plain(get(ctx)))
                        for text, get in pieces])

    return join
