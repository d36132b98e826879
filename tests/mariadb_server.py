"""A real MariaDB server for the tests, from the Debian packages (``mariadb-server``).

:class:`MariaDBServer` runs ``mariadb-install-db`` into a fresh temp dir and ``mariadbd`` on a
free loopback port (socket in the same dir); as root (CI) the server runs as the ``mysql``
system user. A user ``waxflow`` with a password and a database ``waxflow`` are created.

The ``mariadb`` fixture (session) yields a running server; where none can be had the tests
that need it are skipped with the reason, unless ``WAXFLOW_REQUIRE_MARIADB=1`` (CI), where
that is an error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from waxflow.connectors.broker import free_port

PASSWORD = "maria-Secret-42"


class MariaDBError(RuntimeError):
    """The server could not be found, initialised or started."""


class MariaDBServer:
    def __init__(self) -> None:
        server = shutil.which("mariadbd") or shutil.which("mysqld") or (
            "/usr/sbin/mariadbd" if Path("/usr/sbin/mariadbd").exists() else None)
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        client = shutil.which("mariadb") or shutil.which("mysql")
        if not (server and install and client):
            raise MariaDBError("no MariaDB server installed (Debian package `mariadb-server`)")
        self.server, self.install, self.client = server, install, client
        self.root = Path(tempfile.mkdtemp(prefix="waxflow-maria-"))
        self.data = self.root / "data"
        self.sock = self.root / "mysqld.sock"
        self.port = free_port()
        self.user = ["--user=mysql"] if os.geteuid() == 0 else []
        self.proc: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            shutil.chown(self.root, "mysql", "mysql")

    @property
    def url(self) -> str:
        return f"mysql+pymysql://waxflow:{PASSWORD}@127.0.0.1:{self.port}/waxflow"

    def _sql(self, statement: str) -> None:
        res = subprocess.run([self.client, "--no-defaults", "-uroot", f"--socket={self.sock}",
                              "-e", statement], capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            raise MariaDBError(f"{statement[:40]}...: {res.stderr.strip()}")

    def start(self) -> float:
        began = time.monotonic()
        res = subprocess.run([self.install, "--no-defaults", f"--datadir={self.data}",
                              "--auth-root-authentication-method=socket", "--skip-test-db",
                              *self.user], capture_output=True, text=True, timeout=120,
                             cwd=self.root)
        if res.returncode != 0:
            raise MariaDBError(f"mariadb-install-db failed: {res.stderr.strip()[-1500:]}")
        log = open(self.root / "server.log", "wb")  # noqa: SIM115 (the server's lifetime)
        self.proc = subprocess.Popen(
            [self.server, "--no-defaults", f"--datadir={self.data}", f"--socket={self.sock}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--pid-file={self.root}/pid",
             "--skip-log-bin", "--innodb-buffer-pool-size=64M",
             "--innodb-flush-log-at-trx-commit=0", "--skip-name-resolve", *self.user],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise MariaDBError("mariadbd exited: "
                                   + (self.root / "server.log").read_text()[-1500:])
            try:
                self._sql("SELECT 1")
                break
            except MariaDBError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self._sql(f"CREATE DATABASE waxflow; CREATE USER 'waxflow'@'127.0.0.1' IDENTIFIED BY "
                  f"'{PASSWORD}'; GRANT ALL ON waxflow.* TO 'waxflow'@'127.0.0.1';")
        return time.monotonic() - began

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    """A running MariaDB server (``.url``: a SQLAlchemy URL with PyMySQL)."""
    try:
        server = MariaDBServer()
        seconds = server.start()
    except (MariaDBError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("WAXFLOW_REQUIRE_MARIADB") == "1":
            pytest.fail(f"MariaDB required but not available: {exc}")
        pytest.skip(f"no MariaDB server: {exc}")
    print(f"mariadb on 127.0.0.1:{server.port} ready in {seconds:.1f}s")
    try:
        yield server
    finally:
        server.stop()
