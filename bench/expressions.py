"""Micro benchmark: renders/s of compiled flow expressions vs a plain f-string baseline.

Run: ``.venv/bin/python bench/expressions.py [N]``. Prints one line per template with
renders/s and the slowdown ratio against the f-string doing the same lookups.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from waxflow.expressions import Expressions, Secrets


def _rate(fn: Callable[[dict[str, Any]], Any], ctxs: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    for ctx in ctxs:
        fn(ctx)
    return len(ctxs) / (time.perf_counter() - start)


def main(n: int = 200_000) -> None:
    """Measure and print; each context is a fresh dict, as for a fresh Kafka record."""
    exprs = Expressions(Secrets(environ={}))
    ctxs = [
        {"trigger": {"value": {"id": f"o-{i}", "amount": i}, "offset": i}, "flow": {"id": "f"}}
        for i in range(n)
    ]

    def baseline(c: dict[str, Any]) -> str:
        return f"{c['trigger']['value']['id']}-{c['trigger']['value']['amount']}"

    def condition_baseline(c: dict[str, Any]) -> bool:
        return bool(c["trigger"]["value"]["amount"] > 10000)

    cases: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("{{ trigger.value.id }}-{{ trigger.value.amount }}", baseline),
        ("{{ trigger.value.amount > 10000 }}", condition_baseline),
    ]
    for source, base in cases:
        render = exprs.compile(source).render
        _rate(render, ctxs[:1000])  # warm up
        rate, base_rate = _rate(render, ctxs), _rate(base, ctxs)
        print(
            f"{source!r}: {rate:,.0f} renders/s; f-string {base_rate:,.0f}/s; "
            f"ratio {base_rate / rate:.1f}x"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=200_000,
                    help="renders per template (default 200000)")
    main(ap.parse_args().n)
