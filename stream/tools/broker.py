"""A local single-node Apache Kafka broker (KRaft, combined broker + controller) for development
and tests, started straight from the jars: no Docker, no downloaded tarball.

Why this shape:

* The jars come from Maven Central through ``deploy/kafka/pom.xml`` (Maven is the one Java
  client every developer machine and CI has, and Maven Central is reachable where a tarball
  mirror may not be). They are resolved once into a user cache directory
  (``$XDG_CACHE_HOME/interest-stream/kafka-<version>/libs``); a marker file written after a
  complete resolve lets every later start skip Maven entirely, so warm starts need no network.
  ``KAFKA_HOME`` (an unpacked binary distribution) replaces the cache when set.
* The JVM is started directly (``java -cp libs/* kafka.Kafka server.properties``) as a detached
  process in its own session, so ``interest kafka up`` can return while the broker keeps
  running; its pid, ports and version go into the data directory, which is all ``status`` and
  ``down`` need. ``up`` also remembers the data directory in the user cache
  (``$XDG_CACHE_HOME/interest-stream/brokers.json``), so ``status`` and ``down`` find a broker
  started with any ``--data-dir``; a stopped or dead broker is forgotten.
* Kafka's command-line tools (console consumer, topics, consumer groups, ...) run from the
  same jars (``interest kafka tool NAME``): the cache has no ``bin/`` scripts.
* The controller quorum is static (``controller.quorum.voters``), not ``--standalone``: a
  dynamic quorum records the controller's address in the metadata log, which would pin the
  controller port for the life of the data directory. With a static quorum a restart may pick
  fresh free ports and still reuse the data.
* Every failure a user can cause (no Java, old Java, port taken, no Maven, broker exits) is a
  :class:`BrokerError` whose message says what failed and shows the end of the broker log.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from stream.core.errors import BrokerError

#: The Kafka release the pom resolves; keep equal to ``kafka.version`` in deploy/kafka/pom.xml.
KAFKA_VERSION = "4.4.0"
#: Kafka 4.x brokers need Java 17 or newer.
MIN_JAVA = 17
HOST = "127.0.0.1"
NODE_ID = 1
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
POM = DEPLOY_DIR / "pom.xml"
LOG4J2_CONFIG = DEPLOY_DIR / "log4j2.xml"
JVM_OPTS = (
    # Small heap: the machine has 2 cores and also runs the workers and the tests.
    "-Xms128m",
    "-Xmx512m",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
PID_FILE = "broker.pid"
STATE_FILE = "broker.json"
LOG_FILE = "broker.log"
PROPS_FILE = "server.properties"
COMPLETE_MARKER = ".complete"
REGISTRY_FILE = "brokers.json"
TOOLS_JAR_GLOB = "kafka-tools-[0-9]*.jar"
TOOLS_LOG4J2 = "tools-log4j2.xml"
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 20

Log = Callable[[str], object]


@dataclass(frozen=True)
class BrokerInfo:
    """A running broker, as recorded in its data directory."""

    pid: int
    bootstrap: str
    data_dir: Path
    version: str
    log_file: Path

    def describe(self) -> str:
        """One line for ``interest kafka status``."""
        return (
            f"running (pid {self.pid}) at {self.bootstrap}, Kafka {self.version}, "
            f"data in {self.data_dir}, log {self.log_file}"
        )


# --------------------------------------------------------------------------- locations


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/interest-stream/kafka`` (``~/.local/share/...``): one broker per user,
    found by ``status``/``down`` from any working directory."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "interest-stream" / "kafka"


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    """Where the resolved jars live: ``$XDG_CACHE_HOME/interest-stream/kafka-<version>``."""
    return _cache_root() / f"kafka-{version}"


def registry_file() -> Path:
    """The brokers ``up`` started: ``$XDG_CACHE_HOME/interest-stream/brokers.json``."""
    return _cache_root() / REGISTRY_FILE


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "interest-stream"


# --------------------------------------------------------------------------- java


def find_java() -> Path:
    """The ``java`` to run: ``$JAVA_HOME/bin/java`` if JAVA_HOME is set, else ``java`` on PATH.

    Raises BrokerError when there is none or it is older than Java 17.
    """
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        if not os.access(java, os.X_OK):
            raise BrokerError(
                f"JAVA_HOME is {java_home} but {java} is not an executable; "
                f"set JAVA_HOME to a Java {MIN_JAVA}+ installation or unset it"
            )
    else:
        found = shutil.which("java")
        if found is None:
            raise BrokerError(
                f"Java not found: Kafka needs Java {MIN_JAVA} or newer. Install it "
                f"(e.g. `apt-get install openjdk-{MIN_JAVA}-jre-headless`) or set JAVA_HOME"
            )
        java = Path(found)
    major = java_major_version(java)
    if major < MIN_JAVA:
        raise BrokerError(
            f"{java} is Java {major}; Kafka {KAFKA_VERSION} needs Java {MIN_JAVA} or newer "
            "(set JAVA_HOME to a newer one)"
        )
    return java


def java_major_version(java: Path) -> int:
    """The major version of a ``java`` binary, from ``java -version``."""
    try:
        proc = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"cannot run {java} -version: {exc}") from exc
    major = parse_java_version(proc.stderr + proc.stdout)
    if major is None:
        raise BrokerError(f"cannot tell the version of {java}: {proc.stderr.strip()[:200]}")
    return major


def parse_java_version(text: str) -> int | None:
    """``openjdk version "17.0.15"`` -> 17; ``"1.8.0_392"`` -> 8; None if no version is found."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):
        return int(match.group(2))
    return major


# --------------------------------------------------------------------------- jars


@dataclass(frozen=True)
class Classpath:
    """The broker's jars: ``libs`` holds them, ``version`` is the Kafka release they are."""

    libs: Path
    version: str
    kafka_home: Path | None = None

    @property
    def java_arg(self) -> str:
        """The ``-cp`` argument: the JVM expands ``dir/*`` itself."""
        return str(self.libs / "*")


def resolve_classpath(log: Log = print, tools: bool = False) -> Classpath:
    """``$KAFKA_HOME/libs`` when KAFKA_HOME is set, else the cached jars (fetched if needed;
    ``tools``: with Kafka's command-line tools too)."""
    kafka_home = os.environ.get("KAFKA_HOME")
    if kafka_home:
        return kafka_home_classpath(Path(kafka_home))
    return Classpath(libs=fetch(log=log, tools=tools), version=KAFKA_VERSION)


def kafka_home_classpath(home: Path) -> Classpath:
    """The jars of an unpacked Kafka binary distribution; its version from the core jar name."""
    libs = home / "libs"
    cores = sorted(libs.glob("kafka_2.*-*.jar"))
    cores = [jar for jar in cores if not jar.name.endswith(("-test.jar", "-sources.jar"))]
    if not cores:
        raise BrokerError(f"KAFKA_HOME is {home} but {libs} holds no kafka_2.*.jar")
    match = re.match(r"kafka_2\.\d+-(.+)\.jar$", cores[0].name)
    version = match.group(1) if match else "unknown"
    return Classpath(libs=libs, version=version, kafka_home=home)


def fetch(log: Log = print, version: str = KAFKA_VERSION, tools: bool = False) -> Path:
    """Make sure the broker's jars (``tools``: and the tools' jars) are in the cache and return
    the libs directory.

    Skips Maven entirely once the marker file says a resolve completed (and, for ``tools``, the
    kafka-tools jar is there), so warm starts work offline. Resolves into a temporary directory
    and renames it, under a lock, so an interrupted or concurrent fetch never leaves a
    half-filled libs directory behind. A cache resolved before the pom named kafka-tools gets
    the missing jars added one by one (each a rename), never removed: brokers running from it
    keep their jars.
    """
    root = cache_dir(version)
    libs = root / "libs"
    if _fetched(root, tools):
        return libs
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        if _fetched(root, tools):
            return libs
        if (root / COMPLETE_MARKER).is_file():
            log(f"fetching Kafka {version}'s command-line tools from Maven Central into {libs}")
            tmp = root / f"libs.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            _run_maven(tmp, version)
            for jar in sorted(tmp.glob("*.jar")):
                if not (libs / jar.name).exists():
                    jar.replace(libs / jar.name)
            shutil.rmtree(tmp, ignore_errors=True)
            return libs
        log(f"fetching Apache Kafka {version} jars from Maven Central into {libs} (once)")
        tmp = root / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _run_maven(tmp, version)
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        (root / COMPLETE_MARKER).write_text(f"{version}\n", encoding="utf-8")
    return libs


def _fetched(root: Path, tools: bool) -> bool:
    if not (root / COMPLETE_MARKER).is_file():
        return False
    return not tools or any((root / "libs").glob(TOOLS_JAR_GLOB))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory file lock, released on exit."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_maven(out: Path, version: str) -> None:
    """``mvn dependency:copy-dependencies`` of deploy/kafka/pom.xml into ``out``."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (mvn) is needed once to fetch the Kafka jars (apt-get install maven), "
            "or set KAFKA_HOME to an unpacked Kafka distribution"
        )
    if not POM.is_file():
        raise BrokerError(f"{POM} is missing: run from a checkout of interest-stream")
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={out}",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    jars = list(out.glob("kafka_2.*.jar")) if out.is_dir() else []
    if proc.returncode != 0 or not jars:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-LOG_TAIL_LINES:])
        raise BrokerError(f"resolving the Kafka {version} jars with Maven failed:\n{tail}")


# --------------------------------------------------------------------------- ports


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when something listens on (or holds) ``host:port``.

    Binds with SO_REUSEADDR, as the JVM does, so a port in TIME_WAIT after a previous broker
    counts as free, exactly as Kafka would see it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = HOST) -> int:
    """A port the OS says is free now (a race remains until the broker binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepts_connections(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# --------------------------------------------------------------------------- configuration

#: Broker settings fit for one node. auto.create.topics.enable=false: the app and the tests
#: create their topics with explicit partition counts, as in production; a typo in a topic
#: name then fails loudly instead of silently creating a one-partition topic.
SINGLE_NODE_DEFAULTS: Mapping[str, str] = {
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "10",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "auto.create.topics.enable": "false",
    "delete.topic.enable": "true",
    "num.network.threads": "2",
    "num.io.threads": "4",
    "log.retention.hours": "168",
    "log.segment.bytes": "104857600",
}


def render_properties(
    port: int,
    controller_port: int,
    data_dir: Path,
    overrides: Mapping[str, str] | None = None,
) -> str:
    """The ``server.properties`` of a combined broker + controller on 127.0.0.1."""
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "kraft-logs"),
        **SINGLE_NODE_DEFAULTS,
        **(overrides or {}),
    }
    lines = ["# Written by stream/broker.py at each start; edits are overwritten."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (22 chars).

    Never one that starts with "-": ``kafka-storage format -t -abc...`` reads it as an
    option and fails (one start in 64 did), which is why Kafka's own ``Uuid.randomUuid``
    draws again in that case too."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# --------------------------------------------------------------------------- processes


def _pid_alive(pid: int) -> bool:
    """True for a running process; reaps it first if it is our own exited child (a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    """Guards against a stale pid file whose pid now belongs to another process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return _pid_alive(pid)
    return "kafka.Kafka" in cmdline and str(data_dir / PROPS_FILE) in cmdline


def log_tail(log_file: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of the broker log, or a note that there is none."""
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no broker log at {log_file})"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else f"({log_file} is empty)"


def _read_state(data_dir: Path) -> dict[str, object] | None:
    try:
        return json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _clear_pid(data_dir: Path) -> None:
    for name in (PID_FILE, STATE_FILE):
        with contextlib.suppress(FileNotFoundError):
            (data_dir / name).unlink()


# --------------------------------------------------------------------------- life cycle


def status(data_dir: Path | None = None) -> BrokerInfo | None:
    """The broker running from ``data_dir``, or None (a stale pid file is removed)."""
    data_dir = (data_dir or default_data_dir()).resolve()
    state = _read_state(data_dir)
    if state is None:
        return None
    pid = int(state.get("pid", 0))  # type: ignore[arg-type]
    if pid <= 0 or not _pid_alive(pid) or not _is_our_broker(pid, data_dir):
        _clear_pid(data_dir)
        forget(data_dir)
        return None
    return BrokerInfo(
        pid=pid,
        bootstrap=str(state["bootstrap"]),
        data_dir=data_dir,
        version=str(state.get("version", "unknown")),
        log_file=data_dir / LOG_FILE,
    )


def up(
    port: int = 9092,
    data_dir: Path | None = None,
    timeout_s: float = 90,
    log: Log = print,
) -> str:
    """Start the broker in the background unless it already runs; return its bootstrap."""
    data_dir = (data_dir or default_data_dir()).resolve()
    running = status(data_dir)
    if running is not None:
        remember(running)
        log(f"already {running.describe()}")
        return running.bootstrap
    info = start(port, data_dir, timeout_s=timeout_s, log=log)
    remember(info)
    others = [other for other in running_brokers() if other.data_dir != info.data_dir]
    how = f"`interest kafka down --data-dir {data_dir}`" if others else "`interest kafka down`"
    log(f"{info.describe()}; stop it with {how}")
    return info.bootstrap


def start(
    port: int,
    data_dir: Path,
    timeout_s: float = 90,
    log: Log = print,
    overrides: Mapping[str, str] | None = None,
    owner_pid: int | None = None,
) -> BrokerInfo:
    """Format (first time), launch and wait for a broker; used by ``up`` and the test fixture.

    ``overrides`` replaces broker properties (e.g. ``{"auto.create.topics.enable": "true"}``).
    ``owner_pid`` marks a broker that belongs to a process (a test session): if that process
    dies without stopping it, :func:`reap_orphans` may stop it later.
    """
    data_dir = data_dir.resolve()
    java = find_java()
    running = status(data_dir)
    if running is not None:
        raise BrokerError(f"a broker already uses {data_dir}: {running.describe()}")
    if port_in_use(port):
        raise BrokerError(
            f"port {port} on {HOST} is already in use by another process; "
            "stop it or choose another with --port"
        )
    classpath = resolve_classpath(log=log)
    data_dir.mkdir(parents=True, exist_ok=True)
    controller_port = free_port()
    while controller_port == port:  # the OS may offer the port we checked but not yet bound
        controller_port = free_port()
    props_file = data_dir / PROPS_FILE
    props_file.write_text(render_properties(port, controller_port, data_dir, overrides), "utf-8")
    log_file = _rotate_log(data_dir)
    if not (data_dir / "kraft-logs" / "meta.properties").is_file():
        _format_storage(java, classpath, props_file, log_file)
    pid = _launch(java, classpath, props_file, data_dir, log_file)
    bootstrap = f"{HOST}:{port}"
    state = {"pid": pid, "bootstrap": bootstrap, "version": classpath.version, "owner": owner_pid}
    (data_dir / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    (data_dir / PID_FILE).write_text(f"{pid}\n", encoding="utf-8")
    info = BrokerInfo(pid, bootstrap, data_dir, classpath.version, log_file)
    try:
        wait_ready(info, timeout_s)
    except BaseException:
        _terminate(pid, timeout_s=10)
        _clear_pid(data_dir)
        raise
    return info


def _rotate_log(data_dir: Path) -> Path:
    """Keep one previous log (``broker.log.1``) so a dev broker's log never grows unbounded."""
    log_file = data_dir / LOG_FILE
    if log_file.exists():
        log_file.replace(data_dir / f"{LOG_FILE}.1")
    return log_file


def _java_cmd(
    java: Path, classpath: Classpath, log_dir: Path, main: str, short_lived: bool = False
) -> list[str]:
    """The JVM command line shared by the storage tool and the broker.

    A short-lived tool skips the optimising JIT: it saves about a second of start-up on two
    cores, and the tool never runs long enough to profit from it.
    """
    if short_lived:
        tool_opts = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
    else:
        tool_opts = ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
    logging = _logging_opts(classpath, log_dir)
    return [str(java), *JVM_OPTS, *tool_opts, *logging, "-cp", classpath.java_arg, main]


def _logging_opts(classpath: Classpath, log_dir: Path) -> list[str]:
    """Our log4j2 config, or the distribution's own when KAFKA_HOME is used."""
    opts = [f"-Dkafka.logs.dir={log_dir}"]
    home = classpath.kafka_home
    if home is not None and (home / "config" / "log4j2.yaml").is_file():
        return [*opts, f"-Dlog4j2.configurationFile={home / 'config' / 'log4j2.yaml'}"]
    if home is not None and (home / "config" / "log4j.properties").is_file():
        return [*opts, f"-Dlog4j.configuration=file:{home / 'config' / 'log4j.properties'}"]
    return [*opts, f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}"]


def _format_storage(java: Path, classpath: Classpath, props_file: Path, log_file: Path) -> None:
    """``kafka-storage format``: once per data directory, with a fresh cluster id."""
    cmd = _java_cmd(java, classpath, props_file.parent, "kafka.tools.StorageTool", True)
    cmd += ["format", "-t", new_cluster_id(), "-c", str(props_file)]
    with log_file.open("ab") as out:
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
        )
    if proc.returncode != 0:
        raise BrokerError(
            f"formatting the KRaft storage in {props_file.parent} failed "
            f"(exit {proc.returncode}); last lines of {log_file}:\n{log_tail(log_file)}"
        )


def _launch(java: Path, classpath: Classpath, props_file: Path, data_dir: Path, log: Path) -> int:
    """Start ``kafka.Kafka`` detached: own session, output to the log, no stdin."""
    cmd = [*_java_cmd(java, classpath, data_dir, "kafka.Kafka"), str(props_file)]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=data_dir,
            start_new_session=True,
        )
    return proc.pid


def wait_ready(info: BrokerInfo, timeout_s: float) -> None:
    """Wait until the broker answers a metadata request, or raise with the log's tail.

    A listening socket is not enough: the broker accepts connections before its metadata is
    loaded, so the check is a real AdminClient request that must return this broker.
    """
    port = int(info.bootstrap.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(info.pid):
            raise BrokerError(
                f"the Kafka broker exited during start; last lines of {info.log_file}:\n"
                f"{log_tail(info.log_file)}"
            )
        if _accepts_connections(port) and _answers_metadata(info.bootstrap):
            return
        time.sleep(0.2)
    raise BrokerError(
        f"the Kafka broker did not accept requests within {timeout_s:.0f} s; "
        f"last lines of {info.log_file}:\n{log_tail(info.log_file)}"
    )


def _answers_metadata(bootstrap: str) -> bool:
    """One short AdminClient metadata request; librdkafka's own logging is silenced."""
    import logging

    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("interest.broker.probe")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000}, logger=quiet)
    try:
        metadata = admin.list_topics(timeout=2)
    except Exception:
        return False
    return bool(metadata.brokers)


def down(data_dir: Path | None = None) -> BrokerInfo | None:
    """Stop a broker cleanly; return the one stopped (None: none was running).

    ``data_dir`` names the broker; without it, the one broker ``up`` started and that still
    runs (see :func:`running_brokers`). With several running, none is stopped: BrokerError
    lists them (stop them one by one with ``data_dir``, or all with :func:`down_all`).

    SIGTERM lets Kafka flush and close its logs (a clean shutdown avoids log recovery at the
    next start); SIGKILL only if it has not exited within STOP_TIMEOUT_S.
    """
    if data_dir is None:
        running = running_brokers()
        if not running:
            return None
        if len(running) > 1:
            listed = "; ".join(f"{b.bootstrap} (data in {b.data_dir})" for b in running)
            raise BrokerError(
                f"{len(running)} local brokers run: {listed}. Stop one with "
                "`interest kafka down --data-dir DIR`, or all with `interest kafka down --all`"
            )
        data_dir = running[0].data_dir
    data_dir = data_dir.resolve()
    info = status(data_dir)
    if info is None:
        _clear_pid(data_dir)
        forget(data_dir)
        return None
    _terminate(info.pid, timeout_s=STOP_TIMEOUT_S)
    _clear_pid(data_dir)
    forget(data_dir)
    return info


def down_all() -> list[BrokerInfo]:
    """Stop every running broker ``up`` started (and the default data directory's)."""
    stopped = []
    for info in running_brokers():
        done = down(info.data_dir)
        if done is not None:
            stopped.append(done)
    return stopped


# --------------------------------------------------------------------------- registry


def running_brokers() -> list[BrokerInfo]:
    """The brokers ``up`` started that still run, oldest first, and the default data
    directory's broker if it runs; remembered brokers found dead are forgotten."""
    found: list[BrokerInfo] = []
    dirs = remembered()
    default = default_data_dir().resolve()
    if default not in dirs:
        dirs.append(default)
    for data_dir in dirs:
        info = status(data_dir)  # forgets a dead one
        if info is not None:
            found.append(info)
    return found


def remembered() -> list[Path]:
    """The data directories in the registry (running or not; :func:`status` tells)."""
    return [Path(d) for d in _read_registry()]


def remember(info: BrokerInfo) -> None:
    """Note a broker ``up`` started in the user cache, so ``status``/``down`` find it."""

    def add(brokers: dict[str, dict[str, object]]) -> bool:
        brokers[str(info.data_dir)] = {"bootstrap": info.bootstrap, "pid": info.pid}
        return True

    _update_registry(add)


def forget(data_dir: Path) -> None:
    """Drop a data directory from the registry (a no-op when it is not there)."""
    key = str(data_dir.resolve())
    if not registry_file().is_file():
        return

    def drop(brokers: dict[str, dict[str, object]]) -> bool:
        return brokers.pop(key, None) is not None

    _update_registry(drop)


def _read_registry() -> dict[str, dict[str, object]]:
    try:
        data = json.loads(registry_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    brokers = data.get("brokers") if isinstance(data, dict) else None
    return dict(brokers) if isinstance(brokers, dict) else {}


def _update_registry(change: Callable[[dict[str, dict[str, object]]], bool]) -> None:
    """Read, change and (if changed) atomically rewrite the registry, under a file lock."""
    path = registry_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name(f"{REGISTRY_FILE}.lock")):
        brokers = _read_registry()
        if not change(brokers):
            return
        tmp = path.with_name(f"{REGISTRY_FILE}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"brokers": brokers}, indent=1), encoding="utf-8")
        tmp.replace(path)


# --------------------------------------------------------------------------- tools

#: ``interest kafka tool NAME``: Kafka's ``bin/kafka-NAME.sh`` tools and their main classes
#: (Kafka 4.x; the kafka-tools artifact, see deploy/kafka/pom.xml).
TOOLS: Mapping[str, str] = {
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "topics": "org.apache.kafka.tools.TopicCommand",
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "configs": "org.apache.kafka.tools.ConfigCommand",
    "get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "delete-records": "org.apache.kafka.tools.DeleteRecordsCommand",
    "log-dirs": "org.apache.kafka.tools.LogDirsCommand",
    "metadata-quorum": "org.apache.kafka.tools.MetadataQuorumCommand",
    "broker-api-versions": "org.apache.kafka.tools.BrokerApiVersionsCommand",
    "transactions": "org.apache.kafka.tools.TransactionsCommand",
    "reassign-partitions": "org.apache.kafka.tools.reassign.ReassignPartitionsCommand",
    "leader-election": "org.apache.kafka.tools.LeaderElectionCommand",
    "acls": "org.apache.kafka.tools.AclCommand",
    "features": "org.apache.kafka.tools.FeatureCommand",
    "storage": "kafka.tools.StorageTool",
}

#: Tools log warnings and errors to stderr, as the distribution's tools-log4j2.yaml does, so
#: their stdout (a console consumer's records) stays clean.
TOOLS_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by stream/tools/broker.py for `interest kafka tool`; edits are overwritten. -->
<Configuration status="ERROR" shutdownHook="disable">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN">
      <AppenderRef ref="stderr"/>
    </Root>
  </Loggers>
</Configuration>
"""


def tool_name(name: str) -> str:
    """``kafka-topics.sh``, ``kafka-topics`` or ``topics`` -> ``topics``; BrokerError if unknown."""
    short = name.strip().lower().removesuffix(".sh").removeprefix("kafka-")
    if short not in TOOLS:
        raise BrokerError(f"unknown Kafka tool {name!r}; known: {', '.join(TOOLS)}")
    return short


def tool_command(name: str, args: list[str], log: Log = print) -> list[str]:
    """The command line that runs Kafka tool ``name`` with ``args``.

    KAFKA_HOME: the distribution's own ``bin/kafka-NAME.sh`` when it has one. Otherwise the
    cached jars (the tools' jars fetched once if missing) and the tool's main class.
    """
    short = tool_name(name)
    java = find_java()
    classpath = resolve_classpath(log=log, tools=True)
    if classpath.kafka_home is not None:
        script = classpath.kafka_home / "bin" / f"kafka-{short}.sh"
        if script.is_file():
            return [str(script), *args]
    config = _tools_log_config(classpath)
    return [
        str(java),
        *JVM_OPTS,
        "-XX:TieredStopAtLevel=1",
        "-XX:+UseSerialGC",
        f"-Dlog4j2.configurationFile={config}",
        "-cp",
        classpath.java_arg,
        TOOLS[short],
        *args,
    ]


def _tools_log_config(classpath: Classpath) -> Path:
    """The tools' log4j2 config, written beside the jars (rewritten only when it differs)."""
    path = classpath.libs.parent / TOOLS_LOG4J2
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == TOOLS_LOG4J2_XML:
            return path
    tmp = path.with_name(f"{TOOLS_LOG4J2}.tmp-{os.getpid()}")
    tmp.write_text(TOOLS_LOG4J2_XML, encoding="utf-8")
    tmp.replace(path)
    return path


def run_tool(name: str, args: list[str], log: Log = print) -> int:
    """Run Kafka tool ``name`` in the foreground (stdin, stdout, stderr are ours); its exit
    code. Ctrl-C reaches the tool too (same process group): its exit code is returned."""
    cmd = tool_command(name, args, log=log)
    try:
        proc = subprocess.Popen(cmd)
    except OSError as exc:
        raise BrokerError(f"cannot run Kafka tool {name}: {exc}") from exc
    while True:
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            continue  # the tool got the SIGINT as well; wait for it to finish
        return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


def reap_orphans(root: Path) -> list[Path]:
    """Stop brokers under ``root`` whose owner process is gone (a killed test session).

    Only brokers started with an ``owner_pid`` are considered, and only when that process no
    longer runs, so brokers of test sessions running right now, and ``interest kafka up``
    brokers, are never touched. Returns the data directories stopped.
    """
    stopped: list[Path] = []
    for state_file in sorted(root.glob(f"**/{STATE_FILE}")):
        state = _read_state(state_file.parent) or {}
        owner = state.get("owner")
        if isinstance(owner, int) and owner > 0 and not _pid_alive(owner):
            with contextlib.suppress(BrokerError):
                if down(state_file.parent):
                    stopped.append(state_file.parent)
    return stopped


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM, wait (bounded), then SIGKILL; returns once the process is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_exit(pid, timeout_s):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_exit(pid, 10):
        raise BrokerError(f"the Kafka broker (pid {pid}) did not exit even after SIGKILL")


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return not _pid_alive(pid)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m stream.tools.broker fetch``: pre-resolve the jars, the broker's and the tools'
    (CI, offline preparation)."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["fetch"]:
        print("usage: python -m stream.tools.broker fetch", file=sys.stderr)
        return 2
    try:
        find_java()
        classpath = resolve_classpath(tools=True)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Kafka {classpath.version} jars in {classpath.libs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
