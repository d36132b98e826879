"""kafka.Consume settings: groupType SHARE needs a group and refuses partition/offset options."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

import waxflow.connectors.kafka_consume  # noqa: F401  (registers kafka.Consume)
from tests.task_helpers import parse_task

BASE: dict[str, Any] = {"id": "c", "type": "kafka.Consume", "topic": "t", "groupType": "SHARE"}


def test_share_needs_a_group_id() -> None:
    with pytest.raises(ValidationError, match="needs a `groupId`"):
        parse_task(BASE)


@pytest.mark.parametrize("extra", [{"since": "2024-01-01T00:00:00Z"}, {"partitions": [0]}])
def test_share_refuses_partitions_and_since(extra: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="groupType SHARE does not support"):
        parse_task({**BASE, "groupId": "g", **extra})


def test_share_with_a_group_is_valid() -> None:
    task = parse_task({**BASE, "groupId": "g", "maxRecords": 10})
    assert task.groupType == "SHARE" and task.maxRecords == 10
