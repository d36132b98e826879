"""Integration fixtures beyond the broker: a real Confluent-compatible schema registry, and a
real PostgreSQL server (``postgres``, one per session: see the end of this file).

``schema_registry_url`` is ``$WAXFLOW_SCHEMA_REGISTRY_URL`` when set, else an Apicurio Registry
started for the session (see :mod:`tests.registry_server`) and stopped at the end. Where it
cannot be had (no Java 21+, Maven Central unreachable) the tests that need it are skipped with
the reason, unless ``WAXFLOW_REQUIRE_REGISTRY=1`` (CI), where that is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.registry_server import RegistryError, RegistryServer


@pytest.fixture(scope="session")
def schema_registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``schema.registry.url`` of a running, initially empty, Confluent-compatible registry."""
    env = os.environ.get("WAXFLOW_SCHEMA_REGISTRY_URL")
    if env:
        yield env
        return
    server = RegistryServer(tmp_path_factory.mktemp("registry"))
    try:
        seconds = server.start()
    except RegistryError as exc:
        if os.environ.get("WAXFLOW_REQUIRE_REGISTRY") == "1":
            pytest.fail(f"schema registry required but not available: {exc}")
        pytest.skip(f"no schema registry: {exc}")
    print(f"schema registry {server.url} (pid {server.pid}) ready in {seconds:.1f}s")
    try:
        yield server.url
    finally:
        server.stop()


# PostgreSQL (tests/postgres_server.py): one server for the whole session, whichever modules
# ask for ``postgres``; imported here, not into each test module, where pytest would start
# one server per module
from tests.postgres_server import postgres  # noqa: E402, F401
