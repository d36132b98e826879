"""The compiled per-batch path (:mod:`waxflow.operators.fastpath`) on the real broker: the
same flow and records run with it (the default) and without it (``$WAXFLOW_FASTPATH=0``)
leave the same history (each execution's latest document, dates, durations and run ids
aside), the same output records (key, value, headers, partition) and the same committed
offsets — with records the path runs (Switch routes, If both ways, Log lines, Produce with
key and headers), one whose task fails mid-batch (the general path runs it: FAILED) and one
that does not deserialize (SKIPPED)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.flow_helpers import (
    flow_env,
    latest_by_id,
    log_documents,
    new_group,
    new_log_topic,
    produce,
    realtime_flow,
    run_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets, read_all

pytestmark = pytest.mark.integration

BODY = """\
tasks:
  - id: route
    type: core.Switch
    value: "{{ trigger.value.kind }}"
    cases:
      order:
        - id: total
          type: core.Set
          values:
            total: "{{ trigger.value.amount * trigger.value.qty }}"
        - id: big
          type: core.If
          condition: "{{ outputs.total.total > 100 }}"
          then:
            - id: say
              type: core.Log
              message: "big order {{ trigger.value.id }}"
          else:
            - id: small
              type: core.Return
              format: "{{ outputs.total.total }}"
      refund:
        - id: ratio
          type: core.Set
          values:
            ratio: "{{ 100 / trigger.value.amount }}"
    defaults:
      - id: other
        type: core.Log
        level: WARN
        message: "kind {{ trigger.value.kind }}"
  - id: out
    type: kafka.Produce
    topic: {dst}
    transactional: {txn}
    valueSerializer: JSON
    headers:
      source: "{{{{ trigger.topic }}}}"
    from:
      key: "{{{{ trigger.key }}}}"
      value: "{{{{ dict(trigger.value, route=outputs.route.value) }}}}"
"""

VOLATILE = frozenset({"startDate", "endDate", "durationMs", "runId", "ts"})


def _stable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: ("*" if k in VOLATILE else _stable(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _values() -> list[bytes | None]:
    docs: list[dict[str, Any]] = []
    for i in range(40):
        kind = ("order", "refund", "other")[i % 3]
        docs.append({"kind": kind, "id": i, "amount": 0 if i == 13 else 3 + i, "qty": i % 7})
    values: list[bytes | None] = [json.dumps(d).encode() for d in docs]
    values[21] = b"{not json"  # SKIPPED
    return values


@pytest.mark.parametrize("txn", [False, True], ids=["at-least-once", "transactional"])
def test_the_compiled_path_leaves_what_the_general_path_leaves(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, txn: bool) -> None:
    src = new_topic(2)
    values = _values()
    produce(bootstrap, src, values, keys=[str(i).encode() for i in range(len(values))],
            partitions=2)
    seen: dict[str, tuple[dict[str, Any], list[tuple[Any, ...]]]] = {}
    for mode in ("1", "0"):
        dst, group, log = new_topic(2), new_group(), new_log_topic()
        text = realtime_flow("fast", "tests.fast", BODY.replace("{dst}", dst)
                             .replace("{txn}", str(txn).lower())
                             .replace("{{{{", "{{").replace("}}}}", "}}"),
                             topic=src, group=group)
        path = write_flow(tmp_path, text, f"flow-{mode}.yaml")
        result = run_flow(path, flow_env(bootstrap, log, WAXFLOW_FASTPATH=mode,
                                         WAXFLOW_LOG_LEVEL="DEBUG"), idle=2, timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        on = "compiled per-batch path" in result.stderr
        assert on == (mode == "1"), result.stderr[-3000:]
        # how many records it ran: all but the failing and the malformed one
        ran = sum(int(m.group(1)) for m in re.finditer(r"compiled path: (\d+) of \d+ records",
                                                        result.stderr))
        assert ran == (len(values) - 2 if mode == "1" else 0), result.stderr[-3000:]
        assert committed(bootstrap, group, src, 2) == end_offsets(bootstrap, src, 2)
        docs = latest_by_id(log_documents(bootstrap, log))
        outputs = sorted((m.partition(), m.key(), m.value(), tuple(m.headers() or ()))
                         for m in read_all(bootstrap, dst, isolation="read_committed"))
        seen[mode] = ({k: _stable(d) for k, d in docs.items()}, outputs)

    fast_docs, fast_out = seen["1"]
    general_docs, general_out = seen["0"]
    assert len(fast_docs) == len(values)
    states = sorted(d["state"] for d in fast_docs.values())
    assert states.count("FAILED") == 1 and states.count("SKIPPED") == 1
    assert any(d.get("logs") for d in fast_docs.values())
    assert fast_docs == general_docs
    assert len(fast_out) == len(values) - 2  # the failed and the skipped record: none
    assert fast_out == general_out
