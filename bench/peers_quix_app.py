"""The Quix Streams side of ``bench/peers.py`` (run by it in its own venv, not a test).

Run: ``.waxflow/peers-venv/bin/python bench/peers_quix_app.py --bootstrap HOST:PORT --input IN
--output OUT --group G --guarantee exactly-once|at-least-once``; it runs until SIGTERM (Quix
Streams stops gracefully: the last checkpoint commits) and exits 0.

The work: consume JSON records, add ``total = amount * qty``, produce the JSON to OUT with
the input key. This file imports only Quix Streams and the standard library (it runs in the
peers venv, where waxflow is not installed).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--guarantee", choices=("exactly-once", "at-least-once"), required=True)
    args = ap.parse_args()

    from quixstreams import Application  # type: ignore[import-not-found]  # peers venv only

    app = Application(broker_address=args.bootstrap, consumer_group=args.group,
                      auto_offset_reset="earliest", processing_guarantee=args.guarantee,
                      loglevel=logging.WARNING, auto_create_topics=False)
    src = app.topic(args.input, key_deserializer="bytes", value_deserializer="json")
    out = app.topic(args.output, key_serializer="bytes", value_serializer="json")

    def add_total(v: dict[str, Any]) -> dict[str, Any]:
        return {**v, "total": v["amount"] * v["qty"]}

    sdf = app.dataframe(src)
    sdf = sdf.apply(add_total)
    sdf.to_topic(out)
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
