"""Simple templates evaluated from their syntax tree (waxflow.template_direct) give exactly
Jinja's result: property-tested against the Jinja template each stands for, on random
expressions over random data (values, types and errors alike)."""

from __future__ import annotations

import random
from typing import Any

from waxflow.expressions import Expressions, _Direct, _Jinja

LEAVES: list[Any] = [0, 1, -3, 2.5, 0.0, 1e300, "s", "", "10", None, True, False, [1, 2], [],
                     {"k": "v"}, {}, {"n": 4, "items": 1}, (1, 2), b"x", [1, "a"]]
KEYS = ["n", "m", "k", "items", "get", "values", "x_1"]
OPS = ["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", ">=", "in", "not in", "and", "or"]
FILTERS = ["upper", "lower", "length", "int", "float", "string", "abs", "round", "first",
           "last", "join(',')", "default(5)", "tojson", "trim", "sort", "round(1)",
           "replace('a', 'b')", "d('z')", "list", "sum", "max", "title", "slugify"]


def _data(rng: random.Random, depth: int = 0) -> Any:
    if depth > 2 or rng.random() < 0.4:
        return rng.choice(LEAVES)
    if rng.random() < 0.2:
        return [_data(rng, depth + 1) for _ in range(rng.randrange(0, 3))]
    return {rng.choice(KEYS): _data(rng, depth + 1) for _ in range(rng.randrange(1, 4))}


def _path(rng: random.Random) -> str:
    root = rng.choice(["trigger", "trigger.value", "a", "b", "missing", "dict", "null"])
    steps = [rng.choice([f".{rng.choice(KEYS)}", f"['{rng.choice(KEYS)}']", "[0]", "[-1]",
                         "[5]"]) for _ in range(rng.randrange(0, 3))]
    return root + "".join(steps)


def _expr(rng: random.Random, depth: int = 0) -> str:
    roll = rng.random()
    if depth > 2 or roll < 0.3:
        return _path(rng)
    if roll < 0.4:
        return rng.choice(["1", "2.5", "0", "'t'", "true", "none", "[1, 2]", "{'q': 1}", "(1,)"])
    if roll < 0.6:
        return f"({_expr(rng, depth + 1)} {rng.choice(OPS)} {_expr(rng, depth + 1)})"
    if roll < 0.68:
        return f"{rng.choice(['-', 'not ', '+'])}{_expr(rng, depth + 1)}"
    if roll < 0.78:
        return f"({_expr(rng, depth + 1)} | {rng.choice(FILTERS)})"
    if roll < 0.84:
        return (f"({_expr(rng, depth + 1)} if {_expr(rng, depth + 1)} "
                f"else {_expr(rng, depth + 1)})")
    if roll < 0.94:
        kw = ", ".join(f"{rng.choice(KEYS)}={_expr(rng, depth + 1)}"
                       for _ in range(rng.randrange(0, 3)))
        base = _expr(rng, depth + 1) if rng.random() < 0.8 else ""
        return f"dict({', '.join(x for x in (base, kw) if x)})"
    return f"[{_expr(rng, depth + 1)}, {_expr(rng, depth + 1)}]"


def _source(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.7:
        return f"{{{{ {_expr(rng)} }}}}"
    if roll < 0.9:
        return f"x {{{{ {_expr(rng)} }}}} y {{{{ {_expr(rng)} }}}}"
    return f"{{{{ {_expr(rng)} }}}}{{{{ {_expr(rng)} }}}}\n"


def _outcome(render: Any, ctx: dict[str, Any]) -> tuple[Any, ...]:
    try:
        out = render(ctx)
    except Exception as exc:  # the same error, with the same text
        return ("error", type(exc).__name__, str(exc))
    return ("ok", type(out).__name__, repr(out))


def test_a_simple_template_renders_as_jinja_does() -> None:
    rng = random.Random(7)
    exprs = Expressions()
    direct = fast_values = 0
    for _ in range(6_000):
        source = _source(rng)
        try:
            template = exprs.compile(source)
        except Exception:
            continue
        if not isinstance(template, _Direct):
            continue
        direct += 1
        for _ in range(3):
            ctx = {"trigger": {"value": _data(rng), "key": rng.choice(LEAVES)},
                   "a": _data(rng), "b": rng.choice(LEAVES)}
            if rng.random() < 0.05:
                ctx["dict"] = rng.choice([list, {"k": 1}])  # a variable shadowing dict
            fast, jinja = _outcome(template.render, ctx), _outcome(template._slow.render, ctx)
            assert fast == jinja, (source, ctx)
            try:
                template._get(ctx)
                fast_values += 1
            except Exception:
                pass
    assert direct > 2_000  # most of these templates take the direct way
    assert fast_values > 1_000  # ...and many are answered without Jinja


def test_a_fresh_value_each_render() -> None:
    exprs = Expressions()
    for source in ("{{ [1, 2] }}", "{{ dict(trigger.value, n=1) }}", "{{ {'a': [1]} }}"):
        template = exprs.compile(source)
        assert isinstance(template, _Direct), source
        ctx = {"trigger": {"value": {"k": 1}}}
        first = template.render(ctx)
        first.clear()
        assert template.render(ctx), source


def test_the_bench_templates_are_direct() -> None:
    exprs = Expressions()
    for source in ("{{ dict(trigger.value, total=trigger.value.amount * trigger.value.qty) }}",
                   "order {{ trigger.value.id }} for {{ trigger.value.customer }}",
                   "{{ 0 - trigger.value.amount }}", "{{ trigger.value.name | upper }}"):
        assert isinstance(exprs.compile(source), _Direct), source
    ctx = {"trigger": {"value": {"amount": 2.5, "qty": 3, "id": 7, "customer": "c",
                                 "name": "n"}}}
    assert exprs.compile("{{ dict(trigger.value, total=trigger.value.amount * "
                         "trigger.value.qty) }}").render(ctx)["total"] == 7.5
    assert exprs.compile("order {{ trigger.value.id }} for {{ trigger.value.customer }}"
                         ).render(ctx) == "order 7 for c"


def test_what_is_not_simple_stays_jinja() -> None:
    exprs = Expressions()
    for source in ("{{ now() }}", "{{ secret('TOKEN') }}", "{% if a %}x{% endif %}",
                   "{{ a | map('upper') }}", "{{ a is defined }}", "{{ a ** 2 }}",
                   "{{ range(3) }}", "{{ self }}", "{{ a if b }}", "{{ a.b() }}"):
        assert isinstance(exprs.compile(source), _Jinja), source
