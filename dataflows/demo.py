"""Smoke demo: produce a few order records to the local broker and show them consumed.

Replaced by the realtime blueprint flow once it exists; kept tiny on purpose.
"""

from __future__ import annotations

import json
import os
import time
import uuid

from confluent_kafka import Consumer, Producer


def main() -> int:
    bootstrap = os.environ.get("WAXFLOW_BOOTSTRAP", "127.0.0.1:9092")
    topic = f"demo-orders-{uuid.uuid4().hex[:6]}"
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        order = {"id": i, "type": "refund" if i % 3 == 0 else "purchase", "amount": i * 1500}
        producer.produce(topic, key=str(i).encode(), value=json.dumps(order).encode())
    producer.flush(30)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen, deadline = 0, time.monotonic() + 30
    while seen < 10 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        seen += 1
        print(f"{msg.topic()}/{msg.partition()}@{msg.offset()} key={msg.key()!r} "
              f"value={(msg.value() or b'').decode()}")
    consumer.close()
    print(f"consumed {seen}/10 records from {topic}")
    return 0 if seen == 10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
