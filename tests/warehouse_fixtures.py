"""Session fixtures for the warehouse emulators (import them into a conftest or test module).

* ``bigquery_endpoint`` — ``$WAXFLOW_BQ_ENDPOINT`` when set (e.g. ``.ci/run`` started the
  emulator with ``scripts/emulators.sh``), else a bqemulator started for the session on free
  loopback ports and stopped at its end. Project: ``bigquery_project`` (``test-proj``).
* ``snowflake_conn_params`` — connection properties for the Snowflake tasks (``host``,
  ``port``, ``protocol``, ``account``, ``user``, ``password``) of ``$WAXFLOW_SF_HOST``/
  ``$WAXFLOW_SF_PORT`` when set, else of a fakesnow server started for the session.
* ``bigquery_emulator`` / ``snowflake_emulator`` — the :class:`tests.emulators.Emulator`
  behind them, to stop and restart it from a test (when ``managed``).

Importing these fixtures into several modules is harmless: one emulator per name and process.
:func:`make_records` builds the 1,000-record test batch (keys: ``EXPECTED_KEYS``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from tests.emulators import Emulator, acquire, release

__all__ = ["EXPECTED_KEYS", "N", "bigquery_emulator", "bigquery_endpoint", "bigquery_project",
           "make_records", "snowflake_conn_params", "snowflake_emulator"]

N = 1000
#: (topic, partition, offset) of every record of ``make_records()``
EXPECTED_KEYS = {("orders", i % 3, i // 3) for i in range(N)}


def make_records(n: int = N) -> list[dict[str, Any]]:
    """``n`` stored-batch records of topic ``orders`` over 3 partitions: JSON order values
    ``{id, customer (c0..c49), amount (id * 1.25), created (ISO-8601, 3 days)}``."""
    base = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    return [{"key": f"order-{i}", "topic": "orders", "partition": i % 3, "offset": i // 3,
             "timestamp": 1714521600000 + i, "headers": {},
             "value": {"id": i, "customer": f"c{i % 50}", "amount": round(i * 1.25, 2),
                       "created": (base + dt.timedelta(hours=i % 72)).isoformat()}}
            for i in range(n)]


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emu = acquire("bigquery", tmp_path_factory.mktemp("bigquery-emu"))
    try:
        yield emu
    finally:
        release("bigquery")


@pytest.fixture(scope="session")
def bigquery_endpoint(bigquery_emulator: Emulator) -> str:
    """API root of a running BigQuery emulator, e.g. ``http://127.0.0.1:19050``."""
    return bigquery_emulator.env["WAXFLOW_BQ_ENDPOINT"]


@pytest.fixture(scope="session")
def bigquery_project(bigquery_emulator: Emulator) -> str:
    return bigquery_emulator.env.get("WAXFLOW_BQ_PROJECT", "test-proj")


@pytest.fixture(scope="session")
def snowflake_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emu = acquire("snowflake", tmp_path_factory.mktemp("snowflake-emu"))
    try:
        yield emu
    finally:
        release("snowflake")


@pytest.fixture(scope="session")
def snowflake_conn_params(snowflake_emulator: Emulator) -> dict[str, Any]:
    """Connection properties of a running fakesnow server, as task properties."""
    env = snowflake_emulator.env
    return {"host": env.get("WAXFLOW_SF_HOST", "127.0.0.1"), "port": int(env["WAXFLOW_SF_PORT"]),
            "protocol": "http", "account": "fakesnow", "user": "fake", "password": "snow"}
