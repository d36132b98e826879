"""A real moto server (its AWS APIs: S3, Glue...) on a free loopback port, for the tests that
need an AWS endpoint; stopped when the ``with`` block ends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer

from waxflow.connectors.broker import free_port


@contextmanager
def moto_endpoint() -> Iterator[str]:
    """Start moto's server; yield its endpoint URL (``http://127.0.0.1:PORT``)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
