"""Kafka client ``properties`` are templates rendered once at start with env.* and secret()."""

from __future__ import annotations

from pathlib import Path

import pytest

from waxflow.connectors.kafka_config import client_conf
from waxflow.dataflows.spec import parse_flow_text
from waxflow.errors import FlowError
from waxflow.expressions import redact

FLOW = """
id: p
namespace: n
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: x
    groupId: g
    properties:
      client.id: "{client_id}"
tasks:
  - id: out
    type: kafka.Produce
    topic: y
    from: {{value: "{{{{ trigger.value }}}}"}}
    properties:
      linger.ms: "{linger}"
"""


def test_properties_render_env_and_secrets_and_mask_them(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAXFLOW_SECRET_KAFKA_PASSWORD", "pa55-w0rd-xyz")
    monkeypatch.setenv("APP_NAME", "orders")
    conf = client_conf({"client.id": "{{ env.APP_NAME }}-{{ 1000 + 1 }}",
                        "sasl.password": "{{ secret('KAFKA_PASSWORD') }}",
                        "bootstrap.servers": "{{ env.APP_NAME }}:9092",
                        "acks": "all"})
    assert conf["client.id"] == "orders-1001"
    assert conf["sasl.password"] == "pa55-w0rd-xyz"
    assert conf["bootstrap.servers"] == "orders:9092"
    assert conf["acks"] == "all"
    assert redact("auth failed for pa55-w0rd-xyz") == "auth failed for ******"


def test_validate_accepts_start_time_templates() -> None:
    flow = parse_flow_text(FLOW.format(client_id="{{ env.HOME }}", linger="{{ 2 + 3 }}"),
                           "f.yaml")
    assert flow.id == "p"


@pytest.mark.parametrize(("client_id", "linger", "bad"), [
    ("{{ trigger.key }}", "5", "trigger"),
    ("a", "{{ outputs.x.n }}", "outputs"),
    ("{{ execution.id }}", "5", "execution"),
])
def test_validate_refuses_record_data_in_properties(client_id: str, linger: str,
                                                    bad: str) -> None:
    with pytest.raises(FlowError) as err:
        parse_flow_text(FLOW.format(client_id=client_id, linger=linger), "f.yaml")
    text = str(err.value)
    assert f"'{bad}' is not available here" in text and "rendered once" in text
    assert "f.yaml:" in text


def test_a_missing_secret_in_properties_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("WAXFLOW_SECRET_NOPE", raising=False)
    monkeypatch.delenv("WAXFLOW_SECRETS_FILE", raising=False)
    with pytest.raises(Exception, match="secret 'NOPE' is not defined"):
        client_conf({"sasl.password": "{{ secret('NOPE') }}"})
