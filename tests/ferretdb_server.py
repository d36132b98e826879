"""A real MongoDB-compatible server for the tests: FerretDB 1.x with its SQLite backend.

FerretDB speaks MongoDB's wire protocol (pymongo reports server version 7.0) and stores
documents in SQLite files, so it needs nothing else. It is a Go module: :func:`build` fetches
it through the Go module proxy (``go mod download``) and builds ``cmd/ferretdb`` into
``~/.cache/waxflow/ferretdb-<version>/ferretdb`` (``$WAXFLOW_CACHE`` overrides the root).
The module's sources lack the generated ``build/version/version.txt`` (``go install ...@v``
builds a binary that panics at start), so the build copies the module, writes that file
(the version) and runs ``go build`` there. ``python -m tests.ferretdb_server build`` does it
once (``.ci/run``); ``$WAXFLOW_FERRETDB`` names another binary.

:class:`FerretServer` starts it on a free loopback port with a fresh SQLite directory and
FerretDB's authentication on (``--test-enable-new-auth``, a user created at start), so the
tests log in with a password as users do. ``stop`` ends only the pid ``start`` launched.

The ``ferretdb`` fixture yields a running server; where none can be had (no binary and no Go
to build one) the tests that need it skip with the reason, unless
``WAXFLOW_REQUIRE_FERRETDB=1`` (CI), where that is an error.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from waxflow.connectors.broker import cache_dir, free_port

VERSION = "v1.24.2"
MODULE = "github.com/FerretDB/FerretDB"
USER = "waxflow"
PASSWORD = "fd-Secret-0815"


class FerretError(RuntimeError):
    """The server could not be built, found or started; one line for humans."""


def binary_path() -> Path:
    """Where :func:`build` puts the binary."""
    return cache_dir() / f"ferretdb-{VERSION}" / "ferretdb"


def find_ferretdb() -> str | None:
    """``$WAXFLOW_FERRETDB``, the built binary, or ``ferretdb`` on PATH (first found)."""
    for candidate in (os.environ.get("WAXFLOW_FERRETDB"), str(binary_path()),
                      shutil.which("ferretdb")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def build() -> Path:
    """Build FerretDB :data:`VERSION` with Go from the module proxy (idempotent)."""
    target = binary_path()
    if target.is_file():
        return target
    go = shutil.which("go") or ("/usr/local/go/bin/go"
                                if Path("/usr/local/go/bin/go").is_file() else None)
    if go is None:
        raise FerretError("no Go toolchain to build FerretDB (go on PATH)")
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    res = subprocess.run([go, "mod", "download", "-json", f"{MODULE}@{VERSION}"],
                         capture_output=True, text=True, timeout=900, env=env,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise FerretError(f"go mod download {MODULE}@{VERSION} failed: "
                          f"{(res.stderr or res.stdout).strip()[-500:]}")
    import json

    source = Path(json.loads(res.stdout)["Dir"])
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ferretdb-src-", dir=target.parent) as tmp:
        work = Path(tmp) / "src"
        shutil.copytree(source, work)
        for path in [work, *work.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)  # the module cache is read-only
        (work / "build" / "version" / "version.txt").write_text(VERSION + "\n")
        res = subprocess.run([go, "build", "-o", str(target.with_suffix(".tmp")),
                              "./cmd/ferretdb"], cwd=work, capture_output=True, text=True,
                             timeout=1800, env=env, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise FerretError(f"go build of FerretDB failed: {res.stderr.strip()[-800:]}")
    target.with_suffix(".tmp").replace(target)
    return target


class FerretServer:
    """One FerretDB process on ``127.0.0.1:port``, its SQLite files in a temp dir."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="waxflow-ferretdb-"))
        self.port = free_port()
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """A connection string logging in as the test user."""
        return (f"mongodb://{USER}:{PASSWORD}@127.0.0.1:{self.port}/?authSource=admin")

    def start(self, timeout: float = 60) -> float:
        """Start the server and wait until the test user can log in; returns seconds."""
        began = time.monotonic()
        (self.root / "data").mkdir(exist_ok=True)
        log = (self.root / "server.log").open("ab")
        self._proc = subprocess.Popen(
            [self.binary, "--handler=sqlite", f"--sqlite-url=file:{self.root / 'data'}/",
             f"--state-dir={self.root}", f"--listen-addr=127.0.0.1:{self.port}",
             "--debug-addr=127.0.0.1:0", "--telemetry=disable", "--log-level=WARN",
             "--test-enable-new-auth", "--setup-database=admin", f"--setup-username={USER}",
             f"--setup-password={PASSWORD}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.pid = self._proc.pid
        from pymongo import MongoClient

        last = ""
        while time.monotonic() - began < timeout:
            if self._proc.poll() is not None:
                raise FerretError(f"ferretdb exited ({self._proc.returncode}): "
                                  f"{self.log_tail()}")
            client: MongoClient[dict[str, object]] = MongoClient(
                self.uri, serverSelectionTimeoutMS=1000)
            try:
                client.admin.command("ping")
                return time.monotonic() - began
            except Exception as exc:
                last = str(exc)[:200]
            finally:
                client.close()
            time.sleep(0.2)
        self.stop()
        raise FerretError(f"ferretdb did not accept logins within {timeout:g}s: {last}")

    def log_tail(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-1500:] if path.exists() else ""

    def stop(self) -> None:
        """Stop the process ``start`` launched (SIGTERM, then SIGKILL after 10 s)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def ferretdb() -> Iterator[FerretServer]:
    """A running FerretDB (``.uri`` logs in with a password)."""
    binary = find_ferretdb()
    try:
        if binary is None:
            binary = str(build())
        server = FerretServer(binary)
        seconds = server.start()
    except (FerretError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("WAXFLOW_REQUIRE_FERRETDB") == "1":
            pytest.fail(f"FerretDB required but not available: {exc}")
        pytest.skip(f"no FerretDB server: {exc}")
    print(f"ferretdb on 127.0.0.1:{server.port} ready in {seconds:.1f}s")
    try:
        yield server
    finally:
        server.remove()


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python -m tests.ferretdb_server build")
    try:
        print(f"ferretdb {VERSION}: {build()}")
    except FerretError as exc:
        sys.exit(f"ferretdb: {exc}")
