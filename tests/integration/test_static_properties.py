"""Client ``properties`` templates reach the broker rendered (once, at start)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.flow_helpers import (
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce_json,
    run_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets, read_all

pytestmark = pytest.mark.integration

FLOW = """
id: static-props
namespace: tests
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    properties:
      bootstrap.servers: "{{{{ env.TEST_BROKER }}}}"
      client.id: "{{{{ secret('CLIENT_ID') }}}}"
tasks:
  - id: out
    type: kafka.Produce
    topic: {out}
    from: {{key: "{{{{ trigger.value.id }}}}", value: "{{{{ trigger.value.id }}}}"}}
    properties:
      bootstrap.servers: "{{{{ env.TEST_BROKER }}}}"
      linger.ms: "{{{{ 2 + 3 }}}}"
"""


def test_rendered_properties_connect_and_secrets_stay_masked(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic, out = new_topic(2), new_topic(1)
    group, log_topic = f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": i} for i in range(50)], partitions=2)
    flow = write_flow(tmp_path, FLOW.format(topic=topic, group=group, out=out))
    secret = f"client-{uuid.uuid4().hex}"
    # the default bootstrap points nowhere: only the rendered properties can reach the broker
    env = flow_env(bootstrap, log_topic, TEST_BROKER=bootstrap, WAXFLOW_SECRET_CLIENT_ID=secret,
                   WAXFLOW_LOG_LEVEL="DEBUG")
    env["WAXFLOW_BOOTSTRAP"] = "127.0.0.1:9"
    res = run_flow(flow, env, idle=2)
    assert res.returncode == 0, res.stderr[-2000:]
    assert secret not in res.stdout + res.stderr
    docs = log_documents(bootstrap, log_topic)
    assert len(latest_by_id(docs)) == 50
    assert {d["state"] for d in latest_by_id(docs).values()} == {"SUCCESS"}
    assert all(secret not in str(d) for d in docs)
    assert sorted(int(m.value()) for m in read_all(bootstrap, out,
                                                    isolation="read_committed")) == \
        list(range(50))
    assert committed(bootstrap, group, topic, 2) == end_offsets(bootstrap, topic, 2)
