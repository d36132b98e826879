"""Local warehouse emulators for tests: BigQuery (bqemulator) and Snowflake (fakesnow).

A thin layer over ``scripts/emulators.sh``, which installs each emulator in its own venv
(their pins conflict with each other and with the project), runs it as a separate process on
a loopback port and stops it by its pid. An :class:`Emulator` is one emulator in one run
directory (pid, log, ``<name>.env`` with its endpoint): ``start()``/``stop()`` let a test take
it down and bring it back on the same port. :func:`acquire`/:func:`release` share one
emulator per name within a test process (however many fixtures ask for it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "emulators.sh"
DEFAULT_RUN_DIR = ROOT / ".waxflow" / "emu"
NAMES = ("bigquery", "snowflake")
#: the variable that, when set, names an already running emulator (nothing is started)
EXTERNAL_VARS = {"bigquery": "WAXFLOW_BQ_ENDPOINT", "snowflake": "WAXFLOW_SF_PORT"}
_PORT_VARS = {"bigquery": ("WAXFLOW_BQ_REST_PORT", "WAXFLOW_BQ_GRPC_PORT"),
              "snowflake": ("WAXFLOW_SF_PORT",)}


class EmulatorError(RuntimeError):
    """The emulator script failed; the message has the tail of its output."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_env(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of an env file (missing file: empty)."""
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def run_script(command: str, name: str, run_dir: Path | None = None,
               env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run ``scripts/emulators.sh command name``; return its stderr (its log lines)."""
    full_env = {k: v for k, v in os.environ.items() if k not in EXTERNAL_VARS.values()}
    for variables in _PORT_VARS.values():
        for var in variables:
            full_env.pop(var, None)
    full_env.update(env or {})
    if run_dir is not None:
        full_env["WAXFLOW_EMU_RUN_DIR"] = str(run_dir)
    proc = subprocess.run(["bash", str(SCRIPT), command, name], env=full_env, text=True,
                          capture_output=True, timeout=timeout, check=False)
    if proc.returncode not in (0, 3) or (proc.returncode == 3 and command != "status"):
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise EmulatorError(f"emulators.sh {command} {name} exited {proc.returncode}:\n{tail}")
    return proc.stderr


@dataclass
class Emulator:
    """One emulator in ``run_dir``. ``managed``: its pid file is there, so this process may
    stop and start it (an emulator known only by an endpoint variable is not managed)."""

    name: str
    run_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    external_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """``WAXFLOW_BQ_ENDPOINT``/``WAXFLOW_BQ_PROJECT`` or ``WAXFLOW_SF_HOST``/``_PORT``."""
        return self.external_env or read_env(self.run_dir / f"{self.name}.env")

    @property
    def managed(self) -> bool:
        return (self.run_dir / f"{self.name}.pid").exists() or not self.external_env

    def running(self) -> bool:
        return (self.run_dir / f"{self.name}.pid").exists() and subprocess.run(
            ["bash", str(SCRIPT), "status", self.name], capture_output=True, check=False,
            env={**os.environ, "WAXFLOW_EMU_RUN_DIR": str(self.run_dir)}).returncode == 0

    def start(self) -> float:
        """Start (idempotent) and wait until it answers; return the seconds it took. A restart
        comes back on the same port(s) or raises :class:`EmulatorError`."""
        before = read_env(self.run_dir / f"{self.name}.env")
        started = time.monotonic()
        run_script("start", self.name, self.run_dir,
                   {var: str(port) for var, port in self.ports.items()})
        after = read_env(self.run_dir / f"{self.name}.env")
        if before and before != after:
            raise EmulatorError(f"{self.name} came back elsewhere: {before} -> {after}")
        return time.monotonic() - started

    def stop(self) -> None:
        """Stop it by its recorded pid (nothing else is signalled)."""
        run_script("stop", self.name, self.run_dir)


def attach_external(name: str) -> Emulator:
    """The emulator named by ``$WAXFLOW_BQ_ENDPOINT`` / ``$WAXFLOW_SF_PORT`` (e.g. started
    by ``.ci/run``); managed when ``$WAXFLOW_EMU_RUN_DIR`` (default ``.waxflow/emu``) holds
    its pid file and the same endpoint."""
    run_dir = Path(os.environ.get("WAXFLOW_EMU_RUN_DIR") or DEFAULT_RUN_DIR)
    if name == "bigquery":
        env = {"WAXFLOW_BQ_ENDPOINT": os.environ["WAXFLOW_BQ_ENDPOINT"],
               "WAXFLOW_BQ_PROJECT": os.environ.get("WAXFLOW_BQ_PROJECT", "test-proj")}
    else:
        env = {"WAXFLOW_SF_HOST": os.environ.get("WAXFLOW_SF_HOST", "127.0.0.1"),
               "WAXFLOW_SF_PORT": os.environ["WAXFLOW_SF_PORT"]}
    known = read_env(run_dir / f"{name}.env")
    same = all(known.get(k) == v for k, v in env.items() if k.endswith(("ENDPOINT", "PORT")))
    if (run_dir / f"{name}.pid").exists() and same:
        return Emulator(name, run_dir)
    return Emulator(name, run_dir, external_env=env)


_LOCK = threading.Lock()
_SHARED: dict[str, tuple[Emulator, int, bool]] = {}


def acquire(name: str, run_dir: Path) -> Emulator:
    """The process's emulator ``name``: the external one when its variable is set, else one
    started in ``run_dir`` on free ports (first call only). Pair with :func:`release`."""
    with _LOCK:
        if name in _SHARED:
            emu, count, owned = _SHARED[name]
            _SHARED[name] = (emu, count + 1, owned)
            return emu
        if os.environ.get(EXTERNAL_VARS[name]):
            emu, owned = attach_external(name), False
        else:
            ports = {var: free_port() for var in _PORT_VARS[name]}
            emu, owned = Emulator(name, run_dir, ports=ports), True
            seconds = emu.start()
            print(f"{name} emulator {emu.env} ready in {seconds:.1f}s")
        _SHARED[name] = (emu, 1, owned)
        return emu


def release(name: str) -> None:
    """Drop one reference; the last one stops an emulator that :func:`acquire` started."""
    with _LOCK:
        emu, count, owned = _SHARED[name]
        if count > 1:
            _SHARED[name] = (emu, count - 1, owned)
            return
        del _SHARED[name]
    if owned:
        emu.stop()
