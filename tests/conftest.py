"""Shared fixtures: a real Kafka broker for the session, fresh topics, admin helpers.

The broker is the one at ``$WAXFLOW_BOOTSTRAP`` when set (``.ci/run`` starts one), else a
broker started here on free ports in a temporary data dir and stopped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tests.kafka_helpers import create_topic
from waxflow.connectors.broker import LocalBroker, free_port


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real, running Apache Kafka 4.2 broker."""
    env = os.environ.get("WAXFLOW_BOOTSTRAP")
    if env:
        yield env
        return
    broker = LocalBroker(
        data_dir=Path(tmp_path_factory.mktemp("broker")),
        port=free_port(),
        controller_port=free_port(),
        share_lock_ms=1000,
    )
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop(wipe=True)


@pytest.fixture(scope="session")
def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


@pytest.fixture
def new_topic(admin: AdminClient, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Create a fresh topic per call: ``new_topic(partitions=1) -> name``."""
    base = request.node.name.replace("[", "-").replace("]", "")[:60]

    def make(partitions: int = 1, **config: str) -> str:
        name = f"t-{base}-{uuid.uuid4().hex[:8]}"
        create_topic(admin, name, partitions, config)
        return name

    return make


# warehouse emulators (BigQuery, Snowflake): one per session, from their own venvs
from tests.warehouse_fixtures import (  # noqa: E402
    bigquery_emulator,
    bigquery_endpoint,
    bigquery_project,
    snowflake_conn_params,
    snowflake_emulator,
)

__all__ = ["bigquery_emulator", "bigquery_endpoint", "bigquery_project",
           "snowflake_conn_params", "snowflake_emulator"]
