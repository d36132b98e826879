"""A template that is one plain path (``{{ trigger.value.n }}``) renders by dict look-ups,
with exactly Jinja's result: property-tested against the Jinja template it stands for."""

from __future__ import annotations

import random
from typing import Any

from waxflow.expressions import Expressions, _Path

LEAVES: list[Any] = [1, 2.5, "s", None, True, [1, 2], {"k": "v"}, "", 0,
                     {"items": 3, "values": 4}, b"x", (1, 2)]
NAMES = ["a", "b", "items", "values", "get", "x_1", "trigger", "none", "true", "now",
         "missing", "keys", "env", "real", "range"]
FORMS = ["{{ %s }}", "{{%s}}", "{{  %s  }}", "{{ %s }} ", "{{- %s }}"]


def _tree(rng: random.Random, depth: int = 0) -> Any:
    if depth > 2 or rng.random() < 0.3:
        return rng.choice(LEAVES)
    return {rng.choice(["a", "b", "items", "values", "get", "x_1", "none", "real"]):
            _tree(rng, depth + 1) for _ in range(rng.randrange(1, 4))}


def _outcome(render: Any, ctx: dict[str, Any]) -> tuple[Any, ...]:
    try:
        return ("ok", render(ctx))
    except Exception as exc:  # the same error, with the same text
        return ("error", type(exc).__name__, str(exc))


def test_a_plain_path_renders_as_jinja_does() -> None:
    rng = random.Random(1)
    exprs = Expressions()
    direct = 0
    for _ in range(20_000):
        ctx = {"trigger": _tree(rng), "a": _tree(rng), "b": rng.choice(LEAVES), "now": 5}
        path = ".".join(rng.choice(NAMES) for _ in range(rng.randrange(1, 4)))
        template = exprs.compile(rng.choice(FORMS) % path)
        if not isinstance(template, _Path):
            continue
        direct += 1
        fast, jinja = _outcome(template.render, ctx), _outcome(template._slow.render, ctx)
        assert fast == jinja and type(fast[1]) is type(jinja[1]), (template.source, ctx)
    assert direct > 5_000  # most plain paths take the direct way


def test_what_is_not_a_plain_path_stays_jinja() -> None:
    exprs = Expressions()
    for source in ("{{ trigger.value.n + 1 }}", "{{ true }}", "{{ none }}",
                   "{{ trigger.value['n'] }}", "x {{ trigger.key }}",
                   "{{ secret('TOKEN') }}", "{{ now }}", "{{ trigger.key | upper }}"):
        assert not isinstance(exprs.compile(source), _Path), source
    assert isinstance(exprs.compile("{{ trigger.value.n }}"), _Path)
