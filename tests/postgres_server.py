"""A real PostgreSQL server for the tests, from the Debian packages (``postgresql``).

:class:`PostgresServer` runs ``initdb`` into a fresh temp dir and ``pg_ctl start`` on a free
loopback port, with its unix socket in the same dir. PostgreSQL refuses to run as root: when
the tests run as root (CI) both run as the ``postgres`` system user (``runuser``). TCP logins
need a password (scram-sha-256), so the tests see real password authentication; TLS is on,
with a self-signed certificate for 127.0.0.1 (``.cafile``), and optional for clients.

The ``postgres`` fixture (session) yields a running server; where none can be had (package
missing) the tests that need it are skipped with the reason, unless
``WAXFLOW_REQUIRE_POSTGRES=1`` (CI), where that is an error.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.smtp_server import self_signed
from waxflow.connectors.broker import free_port

USER = "waxflow"
PASSWORD = "pg-Secret-4711"
DATABASE = "waxflow"


class PostgresError(RuntimeError):
    """The server could not be found, initialised or started."""


def find_bin() -> Path | None:
    """The newest installed PostgreSQL server's ``bin`` directory."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """One PostgreSQL cluster in a temp dir, on ``127.0.0.1:port``."""

    def __init__(self) -> None:
        bindir = find_bin()
        if bindir is None:
            raise PostgresError("no PostgreSQL server installed (/usr/lib/postgresql/*/bin; "
                                "Debian package `postgresql`)")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="waxflow-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        self.cafile = self.root / "smtp-cert.pem"
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def init(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        res = self._run("initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile),
                        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                        "--no-sync")
        pwfile.unlink()
        if res.returncode != 0:
            raise PostgresError(f"initdb failed: {res.stderr.strip()[-1500:]}")

    def start(self) -> float:
        """Start (initialising on first start) and create the database; returns seconds."""
        began = time.monotonic()
        if not self.data.exists():
            self.init()
            self.cafile, key = self_signed(self.root)
            key.chmod(0o600)
            if self.as_postgres:
                for path in (self.cafile, key):
                    shutil.chown(path, "postgres", "postgres")
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c full_page_writes=off -c synchronous_commit=off "
                f"-c ssl=on -c ssl_cert_file={self.cafile} "
                f"-c ssl_key_file={self.root / 'smtp-key.pem'}")
        res = self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l",
                        str(self.root / "server.log"), "-w", "-t", "60", "start")
        if res.returncode != 0:
            log = (self.root / "server.log").read_text()[-1500:] if (
                self.root / "server.log").exists() else ""
            raise PostgresError(f"pg_ctl start failed: {res.stderr.strip()} {log}")
        res = self._run("psql", "-h", str(self.root), "-p", str(self.port), "-U", USER,
                        "-d", "postgres", "-tAc",
                        f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
        if res.stdout.strip() != "1":
            res = self._run("createdb", "-h", str(self.root), "-p", str(self.port), "-U",
                            USER, DATABASE)
            if res.returncode != 0:
                raise PostgresError(f"createdb failed: {res.stderr.strip()}")
        return time.monotonic() - began

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A running PostgreSQL server (``.url`` logs in as ``waxflow`` with a password)."""
    try:
        server = PostgresServer()
        seconds = server.start()
    except (PostgresError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("WAXFLOW_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required but not available: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    print(f"postgres on 127.0.0.1:{server.port} ready in {seconds:.1f}s")
    try:
        yield server
    finally:
        server.remove()
