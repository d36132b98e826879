"""A local single-node Apache Kafka broker (KRaft) for development, demos and tests.

Kafka ships no PyPI package and no Docker engine runs here, so the broker is assembled from
Maven Central jars (resolved once with Maven, cached under ``~/.cache/waxflow``) and run with
the machine's Java. ``start`` formats storage on first use, starts the broker in the
background and returns only once an AdminClient answers; ``stop`` stops only the process whose
pid it wrote. Transactions and share groups (KIP-932) work on it: the single-node settings for
``__transaction_state`` and ``__share_group_state`` are part of the generated config.
``secure=True`` (``waxflow broker start --secure``) serves SASL_SSL with SCRAM users and ACLs
instead of PLAINTEXT (:mod:`waxflow.connectors.broker_security`).
"""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from waxflow.connectors.broker_security import SecureFiles
from waxflow.errors import WaxflowError
from waxflow.expressions import mask

KAFKA_VERSION = "4.2.0"
SLF4J_VERSION = "2.0.17"
DEFAULT_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093


class BrokerError(WaxflowError, RuntimeError):
    """A broker could not be set up, started or stopped; the message is one line for users."""


def cache_dir() -> Path:
    """Where resolved jars live: ``$WAXFLOW_CACHE`` or ``~/.cache/waxflow``."""
    return Path(os.environ.get("WAXFLOW_CACHE", Path.home() / ".cache" / "waxflow"))


def default_data_dir() -> Path:
    """Where the default broker keeps its storage, pid and log: ``$WAXFLOW_BROKER_DIR``."""
    default = Path.home() / ".local" / "state" / "waxflow" / "broker"
    return Path(os.environ.get("WAXFLOW_BROKER_DIR", default))


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.waxflow</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId>
      <version>{slf4j}</version></dependency>
  </dependencies>
</project>
"""

_PLAINTEXT_LISTENERS = """listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{aport}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
"""

_SERVER_PROPERTIES = """process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{cport}
{listeners}log.dirs={logs}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.share.record.lock.duration.ms={lock_ms}
group.share.min.record.lock.duration.ms={lock_ms}
# a share partition's initialisation cut short by a broker crash is retried only after this
# (Kafka's default 30 s stalled a share group ~40 s after a restart; 5 s is the floor, =
# offsets.commit.timeout.ms)
group.share.initialize.retry.interval.ms=5000
auto.create.topics.enable=true
log.cleaner.dedupe.buffer.size=16777216
"""


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"`{tool}` not found on PATH: {hint}")
    return path


def resolve_jars(version: str = KAFKA_VERSION) -> Path:
    """Return a directory holding the broker's runtime jars, resolving them with Maven once.

    A second call finds the cache (marked complete by a ``.complete`` file) and needs no network.
    """
    libs = cache_dir() / f"kafka-{version}" / "libs"
    if (libs.parent / ".complete").exists():
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one resolver at a time; others wait, then reuse
        if (libs.parent / ".complete").exists():
            return libs
        return _resolve_locked(libs, version)


def _resolve_locked(libs: Path, version: str) -> Path:
    mvn = _require("mvn", "install Maven 3.8+ (Debian package `maven`) to fetch the Kafka jars")
    work = libs.parent
    (work / "pom.xml").write_text(_POM.format(kafka=version, slf4j=SLF4J_VERSION))
    if libs.exists():
        shutil.rmtree(libs)
    proc = subprocess.run(
        [mvn, "-B", "-q", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={libs}"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0 or not any(libs.glob(f"kafka_2.13-{version}.jar")):
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ERROR" in ln]
        why = lines[0].strip() if lines else "no error text"
        raise BrokerError(
            f"could not resolve org.apache.kafka:kafka_2.13:{version} from Maven Central and "
            f"nothing is cached in {libs.parent}: {why[:300]}"
        )
    (work / ".complete").write_text(version)
    return libs


@dataclass
class LocalBroker:
    """One local broker: its data directory, ports and the pid file it owns."""

    data_dir: Path
    port: int = DEFAULT_PORT
    controller_port: int = DEFAULT_CONTROLLER_PORT
    share_lock_ms: int = 30000
    #: the port clients are told to connect to (default ``port``): a proxy's, in tests that
    #: put a TCP proxy between clients and the broker (plaintext only)
    advertised_port: int | None = None
    #: a SASL_SSL listener with SCRAM users and ACLs instead of PLAINTEXT
    #: (:mod:`waxflow.connectors.broker_security`)
    secure: bool = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def security(self) -> SecureFiles:
        """The secure mode's files (CA, keystore, the admin's client settings)."""
        return SecureFiles(self.data_dir / "secure")

    @property
    def formatted_secure(self) -> bool | None:
        """Whether the storage of this directory was formatted for the secure mode (None
        when it is not formatted yet)."""
        if not (self.data_dir / "kraft-logs" / "meta.properties").exists():
            return None
        return self.security.exists()

    def admin_conf(self) -> dict[str, str]:
        """librdkafka settings of the broker's admin (a super user in the secure mode)."""
        if self.secure:
            return self.security.admin_conf()
        return {"bootstrap.servers": self.bootstrap}

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def _props(self) -> Path:
        return self.data_dir / "server.properties"

    def pid(self) -> int | None:
        """The pid of the broker this directory started, if that process still runs."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"kafka.Kafka" not in cmdline.read_bytes():
            return None  # pid reused by another program: not ours
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout: float = 90.0) -> float:
        """Start the broker (formatting storage on first use); return seconds until ready.

        Idempotent: an already running broker of this directory is left as it is. A data dir
        formatted for the other mode (plaintext or ``secure``) is refused.
        """
        formatted = self.formatted_secure
        if formatted is not None and formatted != self.secure:
            was, now = ("secure", "plaintext") if formatted else ("plaintext", "secure")
            raise BrokerError(
                f"the broker storage in {self.data_dir} was made for a {was} broker; start it "
                f"{'with' if formatted else 'without'} --secure, or wipe it first (`waxflow "
                f"broker stop --wipe`) to start a {now} one")
        if self.running():
            return 0.0
        t0 = time.monotonic()
        java = _require("java", "install a Java 17+ runtime (Debian package `openjdk-17-jre`)")
        for p in (self.port, self.controller_port):
            if _port_taken(p):
                raise BrokerError(
                    f"port {p} on 127.0.0.1 is taken by another process; stop it or pick "
                    "other ports with --port/--controller-port"
                )
        libs = resolve_jars()
        classpath = f"{libs}/*"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "kraft-logs"
        format_args: list[str] = []
        password: str | None = None
        if self.secure:
            password = self.security.prepare(self.bootstrap)
            listeners = self.security.server_properties(self.port, self.controller_port,
                                                        password)
            format_args = self.security.format_args(password)
        else:
            listeners = _PLAINTEXT_LISTENERS.format(port=self.port, cport=self.controller_port,
                                                    aport=self.advertised_port or self.port)
        self._props.touch(mode=0o600)
        os.chmod(self._props, 0o600)  # holds the admin password in the secure mode
        self._props.write_text(_SERVER_PROPERTIES.format(
            port=self.port, cport=self.controller_port, listeners=listeners, logs=logs,
            lock_ms=self.share_lock_ms))
        if formatted is None:
            self._format(java, classpath, format_args, password)
        env = dict(os.environ)
        env.setdefault("KAFKA_HEAP_OPTS", "")
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                [java, "-Xms512m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                 "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
                 "-Dorg.slf4j.simpleLogger.showDateTime=true",
                 "-cp", classpath, "kafka.Kafka", str(self._props)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env,
            )
        self.pid_file.write_text(str(proc.pid))
        self._wait_ready(proc, timeout)
        return time.monotonic() - t0

    def _format(self, java: str, classpath: str, extra: list[str], hide: str | None) -> None:
        def tool(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([java, "-cp", classpath, "kafka.tools.StorageTool", *args],
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
        res = tool("format", "--standalone", "-t", cluster_id(), "-c", str(self._props), *extra)
        if res.returncode != 0:
            why = mask(res.stderr.strip()[:300], [hide])
            raise BrokerError(f"formatting broker storage failed: {why}")

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise BrokerError(
                    f"the broker exited at start (code {proc.returncode}); see {self.log_file}"
                )
            if _port_taken(self.port):
                admin = AdminClient({**self.admin_conf(), "socket.timeout.ms": 2000})
                try:
                    admin.list_topics(timeout=2)
                    return
                except Exception:
                    pass
            time.sleep(0.2)
        self.stop()
        raise BrokerError(f"the broker did not answer within {timeout:.0f}s; see {self.log_file}")

    def stop(self, wipe: bool = False, timeout: float = 30.0) -> bool:
        """Stop the broker this directory started (only that pid); return whether one ran."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        if wipe and self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        return pid is not None


def cluster_id() -> str:
    """A new KRaft cluster id as ``StorageTool random-uuid`` prints it (a random UUID in
    unpadded URL-safe base64, never starting with ``-``), without starting a JVM for it."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours still answers kill(0): reap it if we can
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        stat = Path(f"/proc/{pid}/stat")
        try:
            return stat.read_text().split(") ", 1)[1][0] != "Z"
        except (OSError, IndexError):
            return False


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
