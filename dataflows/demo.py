"""The main demo: the "every Kafka record" blueprint on the local broker, then its history.

Starts a small HTTP server standing in for the refunds API and the alert webhook, produces
generated orders (plus two malformed records) to ``orders``, runs
``waxflow run dataflows/flows/orders_realtime.yaml --stop-when-idle 3``, and prints what the
API received, the executions by state and one record's trace from ``waxflow executions``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

#: the blueprint's flow file (importing the blueprint module would compile the flow and take
#: its instance lock in this process, so the ``waxflow run`` below would be refused)
FLOW_FILE = Path(__file__).parent / "flows" / "orders_realtime.yaml"


RECEIVED: Counter[str] = Counter()


class _Api(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        RECEIVED[self.path] += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, format: str, *args: object) -> None:
        return


def _orders(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.choices(["purchase", "refund", "chargeback"], [80, 15, 5])[0]
        amount = round(rng.lognormvariate(5, 1.5), 2)
        out.append(json.dumps({"id": f"o-{seed}-{i}", "type": kind, "amount": amount,
                               "customer": f"c{rng.randrange(50)}"}).encode())
    for i in (n // 4, 3 * n // 4):  # two anomalies, so the alert path always shows
        out[i] = json.dumps({"id": f"o-{seed}-{i}", "type": "purchase", "amount": 25000.0,
                             "customer": "c0"}).encode()
    out.insert(n // 3, b'{"id": "broken", "type": ')
    out.insert(2 * n // 3, b"\xff\xfe not utf-8")
    return out


def _waxflow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).with_name("waxflow"))
    return subprocess.run([exe, *args], env=env, text=True, capture_output=True)


def main() -> int:
    bootstrap = os.environ.get("WAXFLOW_BOOTSTRAP", "127.0.0.1:9092")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic("orders", 3, 1)]).values():
        try:
            fut.result(timeout=30)
        except Exception as exc:  # already exists from an earlier demo run
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}"

    seed = random.randrange(1_000_000)
    records = _orders(300, seed)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i, value in enumerate(records):
        producer.produce("orders", key=str(i).encode(), value=value)
    producer.flush(30)
    print(f"produced {len(records)} records to 'orders' (2 of them malformed, at least 2 "
          "over the alert threshold)")

    env = {**os.environ, "WAXFLOW_BOOTSTRAP": bootstrap, "WAXFLOW_DEMO_API": api,
           "WAXFLOW_LOG_LEVEL": "ERROR", "COLUMNS": os.environ.get("COLUMNS", "120")}
    print(f"running: waxflow run {FLOW_FILE.relative_to(Path.cwd())} --stop-when-idle 3")
    run = _waxflow("run", str(FLOW_FILE), "--stop-when-idle", "3", env=env)
    server.shutdown()
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        return 1
    print(f"refunds API received {RECEIVED['/refunds']} calls, "
          f"alert webhook {RECEIVED['/alerts']} calls")

    listing = _waxflow("executions", "list", "--flow", "orders-realtime", "--limit", "100000",
                       "--format", "json", env=env)
    if listing.returncode != 0:
        print(listing.stderr, file=sys.stderr)
        return 1
    docs = json.loads(listing.stdout)
    states = Counter(d["state"] for d in docs)
    print("executions of orders-realtime so far by state: "
          + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    table = _waxflow("executions", "list", "--flow", "orders-realtime", "--limit", "8",
                     "--no-sync", env=env)
    print(table.stdout)
    skipped = next((d for d in docs if d["state"] == "SKIPPED"), None)
    if skipped is not None:
        trig = skipped.get("trigger") or {}
        topic, part, off = trig.get("topic"), trig.get("partition"), trig.get("offset")
        print(f"what happened to the malformed record {topic}/{part}@{off}:")
        trace = _waxflow("executions", "trace", str(topic), str(part), str(off), "--no-sync",
                         env=env)
        print(trace.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
