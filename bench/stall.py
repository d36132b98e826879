"""A slow or failing record never stalls the others: the issue's two scenarios, timed.

1. **Retries**: N JSON records on 4 partitions, one ``core.Python`` task with
   ``retry: {type: constant, interval: PT5S, maxAttempts: 2}``. Launch → exit
   (``--stop-when-idle 2``) with no failures, then with one record in 1,000 failing once.
   Target: the flaky run takes at most the clean run + 8 s.
2. **Slow records**: the same flow where one record in 500 takes 2 s (an HTTP call to a
   slow endpoint on loopback) against the flow where none does. Target: throughput of the
   slow run at least 80% of the clean run's.

Both runs of a scenario are measured in the same process, back to back; only their ratio
and difference mean anything (the machine is shared). ``--produce`` adds a transactional
``kafka.Produce`` of each record after the work (exactly once: the epoch's transaction
commits the outputs of the executions below the offsets it commits). Usage::

    python bench/stall.py [--records 8000] [--produce] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
import http.server
import json
import threading
import time
from pathlib import Path

from benchkit import (
    REPO,
    Resources,
    add_bootstrap,
    child_env,
    load,
    produce_all,
    run_child,
    scratch,
    verdict,
    waxflow_cmd,
)
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

RETRY_FLOW = """\
id: bench-stall
namespace: bench
triggers:
  - id: in
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
tasks:
  - id: work
    type: core.Python
    function: tests.flow_funcs:flaky
    args: {{marks: "{marks}", every: {every}}}
    retry: {{type: constant, interval: PT5S, maxAttempts: 2}}
"""

SLOW_FLOW = """\
id: bench-slow
namespace: bench
triggers:
  - id: in
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
tasks:
  - id: call
    type: core.If
    condition: "{{{{ {every} > 0 and trigger.value.id % {every_or_1} == 0 }}}}"
    then:
      - id: slow
        type: http.Request
        uri: "{url}/slow"
    else:
      - id: fast
        type: core.Set
        values: {{n: "{{{{ trigger.value.id }}}}"}}
"""


PRODUCE_TASK = """\
  - id: out
    type: kafka.Produce
    topic: {out}
    from: {{key: "{{{{ trigger.value.id }}}}", value: "{{{{ trigger.value.id }}}}"}}
"""


class _Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(2.0)
        body = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def _one(res: Resources, bootstrap: str, tmp: Path, text: str, n: int, name: str,
         *, produce: bool, **fmt: object) -> float:
    topic = res.create(res.name(f"in-{name}"), 4)
    if produce:
        text += PRODUCE_TASK
        fmt["out"] = res.create(res.name(f"out-{name}"), 4)
    group = res.group(name)
    log = res.log_topic(name)
    produce_all(bootstrap, topic, n)
    marks = tmp / f"marks-{name}"
    marks.mkdir()
    flow = tmp / f"{name}.yaml"
    flow.write_text(text.format(topic=topic, group=group, marks=marks, **fmt))
    env = child_env(bootstrap, log, {"PYTHONPATH": str(REPO)})
    run = run_child(waxflow_cmd(flow, 2), env, timeout=900, name=name)
    print(f"  {name:<12} launch → exit {run.wall:6.1f} s   CPU {run.cpu:6.1f} s   "
          f"load {load()}")
    return run.wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=8000)
    ap.add_argument("--produce", action="store_true",
                    help="add a transactional kafka.Produce of each record to both flows")
    add_bootstrap(ap)
    args = ap.parse_args()
    n = args.records
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    res = Resources(AdminClient({"bootstrap.servers": args.bootstrap}), prefix="stall")
    try:
        with scratch(res, "stall-") as tmp:
            print(f"1. retries: {n} records, 1 in 1,000 fails once, retry after 5 s")
            clean = _one(res, args.bootstrap, tmp, RETRY_FLOW, n, "clean", every=0,
                         produce=args.produce)
            flaky = _one(res, args.bootstrap, tmp, RETRY_FLOW, n, "flaky", every=1000,
                         produce=args.produce)
            print(f"   flaky - clean = {flaky - clean:+.1f} s (target ≤ +8 s: "
                  f"{verdict(flaky - clean <= 8)})")
            print(f"2. slow records: {n} records, 1 in 500 takes 2 s (HTTP on loopback)")
            fast = _one(res, args.bootstrap, tmp, SLOW_FLOW, n, "no-slow", every=0,
                        every_or_1=1, url=url, produce=args.produce)
            slow = _one(res, args.bootstrap, tmp, SLOW_FLOW, n, "slow", every=500,
                        every_or_1=500, url=url, produce=args.produce)
            ratio = fast / slow
            print(f"   throughput slow / no-slow = {ratio:.0%} (target ≥ 80%: "
                  f"{verdict(ratio >= 0.8)})")
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
