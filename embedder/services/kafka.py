"""A real Apache Kafka node in KRaft mode (broker and controller), run from Maven Central jars: alone, or
one of a local cluster (`embedder/services/kafka_cluster.py`)."""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from embedder.services.process import ServiceError, describe, pid_alive, poll_until, port_open, run, wait_until
from shared.contract.config import LOCAL_KAFKA_PORT

POM = Path(__file__).with_name("pom.xml")
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"


@dataclass(frozen=True)
class LocalKafka:
    """Paths and ports of a project-local broker: alone under `<services_dir>/kafka`, or node `node_id` of
    a cluster whose controllers are `voters` ((node id, controller port) of each), with topics replicated
    `replication` times and `min.insync.replicas` one less (at least 1), as a production cluster has."""

    root: Path
    host: str = "127.0.0.1"
    port: int = LOCAL_KAFKA_PORT
    node_id: int = 1
    voters: tuple[tuple[int, int], ...] = ()
    replication: int = 1
    libs_root: Path | None = None
    """Where the jars are (a cluster's nodes share one copy); default `root`."""
    heap_mb: int = 768

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def libs(self) -> Path:
        return (self.libs_root or self.root) / "libs"

    @property
    def pid_file(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.root / "kafka.log"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def running_pid(self) -> int | None:
        return pid_alive(self.pid_file)

    def status(self) -> str:
        return describe(self.running_pid(), self.host, self.port, self.bootstrap)

    def fetch_jars(self) -> None:
        """Copy the broker's runtime jars from Maven Central into `libs/` once."""
        if self.libs.is_dir() and any(self.libs.glob("kafka_2.13-*.jar")):
            return
        self.libs.parent.mkdir(parents=True, exist_ok=True)
        mvn = shutil.which("mvn")
        if not mvn:
            raise ServiceError(
                "Maven (mvn) is required to fetch the Kafka broker jars; install it (apt-get install maven)"
            )
        tmp = (self.libs.parent / "libs.partial").resolve()
        shutil.rmtree(tmp, ignore_errors=True)
        run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={tmp}",
            ],
            what="fetching Kafka jars with Maven",
        )
        tmp.rename(self.libs)

    def _write_config(self) -> None:
        quorum = (
            f"controller.quorum.voters={','.join(f'{n}@{self.host}:{p}' for n, p in self.voters)}"
            if self.voters
            else f"controller.quorum.bootstrap.servers={self.host}:{self.controller_port}"
        )
        rf, isr = self.replication, max(self.replication - 1, 1)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node_id}",
                    quorum,
                    f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.data_dir.resolve()}",
                    "num.partitions=1",
                    "auto.create.topics.enable=true",
                    f"default.replication.factor={rf}",
                    f"min.insync.replicas={isr}",
                    f"offsets.topic.replication.factor={rf}",
                    "offsets.topic.num.partitions=8",
                    f"transaction.state.log.replication.factor={rf}",
                    f"transaction.state.log.min.isr={isr}",
                    f"share.coordinator.state.topic.replication.factor={rf}",
                    f"share.coordinator.state.topic.min.isr={isr}",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=-1",
                    "",
                ]
            )
        )
        (self.root / "log4j2.properties").write_text(
            "\n".join(
                [
                    "status = warn",
                    "appender.out.type = Console",
                    "appender.out.name = STDOUT",
                    "appender.out.layout.type = PatternLayout",
                    "appender.out.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.out.ref = STDOUT",
                    "logger.kafka.name = kafka",
                    "logger.kafka.level = WARN",
                    "logger.apache.name = org.apache.kafka",
                    "logger.apache.level = WARN",
                    "",
                ]
            )
        )

    def _java(self, main_class: str, *args: str) -> list[str]:
        return [
            shutil.which("java") or "java",
            "-Xms256m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={(self.root / 'log4j2.properties').resolve()}",
            "-cp",
            f"{self.libs.resolve()}/*",
            main_class,
            *args,
        ]

    def _format_storage(self, cluster_id: str | None = None) -> None:
        """Format the data directory once: alone as a standalone controller, in a cluster with the
        cluster's id and its static voters."""
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = cluster_id or base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run(
            self._java(
                STORAGE_TOOL,
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.config),
                *([] if self.voters else ["--standalone"]),
                *self._format_options(),
            ),
            what="formatting Kafka KRaft storage",
        )

    def _format_options(self) -> list[str]:
        """More options for the storage format (a secured broker adds its SCRAM users)."""
        return []

    def prepare(self, cluster_id: str | None = None) -> None:
        """Jars, configuration and formatted storage, without starting anything."""
        if not shutil.which("java"):
            raise ServiceError("Java is required to run the Kafka broker; install a JDK 17+")
        self.root.mkdir(parents=True, exist_ok=True)
        self.fetch_jars()
        self._write_config()
        self._format_storage(cluster_id)

    def up(self, timeout: float = 120.0, attempts: int = 3) -> bool:
        """Start the broker unless ours already runs; True when this call started it.

        A broker that exits while starting is started again (up to `attempts` times): right after a
        stop its ports or its data-directory lock can still be held for a moment. The error names
        the broker's own fatal log lines, not only its exit code."""
        if self.running_pid():
            wait_until(self._ready, timeout, f"Kafka at {self.bootstrap}")
            return False
        if port_open(self.host, self.port):
            raise ServiceError(
                f"port {self.port} is already used by a process this project did not start; "
                "stop it or set KAFKA_BOOTSTRAP_SERVERS to use it"
            )
        self.prepare()
        for attempt in range(1, attempts):
            self._wait_data_dir_unlocked(60.0)
            try:
                self._start(timeout)
                return True
            except BrokerExited as exc:
                delay = 2.0 * attempt
                print(f"embedder: {exc}; starting it again in {delay:.0f}s", file=sys.stderr)
                poll_until(self._ports_free, 30.0)
                time.sleep(delay)
        self._wait_data_dir_unlocked(60.0)
        self._start(timeout)  # the last attempt: its failure is the error
        return True

    def spawn(self) -> subprocess.Popen:
        """Start the node's process and return at once (a cluster's nodes wait for each other)."""
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self._java(MAIN_CLASS, str(self.config)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def kill(self) -> bool:
        """SIGKILL the node (tests of broker loss); True if it was running."""
        pid = self.running_pid()
        if not pid:
            return False
        os.killpg(pid, signal.SIGKILL)
        poll_until(lambda: not pid_alive(self.pid_file), 30.0)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _start(self, timeout: float) -> None:
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        proc = self.spawn()

        def ready() -> bool:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise BrokerExited(
                    f"Kafka exited with {proc.returncode} while starting; {self.log_file}: "
                    + fatal_lines(self.log_file, log_start)
                )
            return self._ready()

        wait_until(ready, timeout, f"Kafka at {self.bootstrap}", interval=0.5)

    def _wait_data_dir_unlocked(self, timeout: float) -> None:
        """Wait until no process holds the data directory's lock (a broker still shutting down does)."""
        wait_until(
            self._data_dir_unlocked,
            timeout,
            f"{self.data_dir / '.lock'} to be unlocked (held by a broker that has not finished stopping?)",
            interval=0.5,
        )

    def _data_dir_unlocked(self) -> bool:
        lock_file = self.data_dir / ".lock"
        if not lock_file.exists():
            return True
        try:
            with open(lock_file, "a") as handle:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the broker's tryLock is this fcntl lock
                fcntl.lockf(handle, fcntl.LOCK_UN)
            return True
        except OSError:
            return False

    def _ports_free(self) -> bool:
        """Nothing listens on the broker's or the controller's port."""
        return not port_open(self.host, self.port) and not port_open(self.host, self.controller_port)

    def ready(self) -> bool:
        return self._ready()

    def client_config(self) -> dict:
        """kafka-python keyword arguments for this node (a secured broker adds its security settings)."""
        return {"bootstrap_servers": self.bootstrap}

    def _ready(self) -> bool:
        """The broker answers a metadata request (not only a TCP connect)."""
        if not port_open(self.host, self.port):
            return False
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(**self.client_config(), request_timeout_ms=5000)
        except (KafkaError, OSError):
            return False
        try:
            if self.voters:  # in a cluster: ready once this broker is registered with the controllers
                return self.node_id in {b["broker_id"] for b in admin.describe_cluster()["brokers"]}
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    def down(self, timeout: float = 60.0, graceful: bool = True) -> bool:
        """Stop the broker this project started (SIGTERM, then SIGKILL; at once when not `graceful`: a test
        cluster's throwaway data); True if it was running.

        Returns once the process is gone, its ports are free and its data directory is unlocked, so
        an `up` right after succeeds."""
        pid = self.running_pid()
        if not pid:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.killpg(pid, signal.SIGTERM if graceful else signal.SIGKILL)
        gone = lambda: not pid_alive(self.pid_file)  # noqa: E731
        if not poll_until(gone, timeout):
            os.killpg(pid, signal.SIGKILL)
            poll_until(gone, 30.0)
        self.pid_file.unlink(missing_ok=True)
        poll_until(self._ports_free, 30.0)
        self._wait_data_dir_unlocked(60.0)
        return True


class BrokerExited(ServiceError):
    """The broker process ended while it was starting."""


def fatal_lines(log_file: Path, since: int, limit: int = 6) -> str:
    """The broker's ERROR/FATAL lines written after byte `since` (the cause of an exit), or its last lines."""
    try:
        with open(log_file, "rb") as log:
            log.seek(since)
            lines = log.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "(no log)"
    marked = [line for line in lines if " ERROR " in line or " FATAL " in line or "Exception" in line]
    chosen = list(dict.fromkeys(marked[-limit:] + lines[-3:]))
    return " | ".join(line.strip()[:300] for line in chosen) or "(empty log)"
