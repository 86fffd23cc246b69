"""A real local Kafka cluster: `size` KRaft nodes (each broker and controller) from the same jars, with the
replication settings of a production cluster (replication 3, min.insync.replicas 2) — for tests of broker
loss and for `embedder services up --brokers 3`."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from pathlib import Path

from embedder.services.kafka import LocalKafka
from embedder.services.process import ServiceError, port_open, wait_until

CLUSTER_BASE_PORT = 29192
"""Node k listens on base + 2(k-1) (its controller on the next port): beside the single local broker."""


@dataclass(frozen=True)
class LocalKafkaCluster:
    root: Path
    size: int = 3
    host: str = "127.0.0.1"
    base_port: int = CLUSTER_BASE_PORT

    @property
    def nodes(self) -> list[LocalKafka]:
        voters = tuple((k, self.base_port + 2 * (k - 1) + 1) for k in range(1, self.size + 1))
        return [
            LocalKafka(
                self.root / f"node-{k}",
                self.host,
                self.base_port + 2 * (k - 1),
                node_id=k,
                voters=voters,
                replication=min(3, self.size),
                libs_root=self.root.parent / "kafka",
                heap_mb=512,
            )
            for k in range(1, self.size + 1)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id - 1]

    def _cluster_id(self) -> str:
        path = self.root / "cluster.id"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            path.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=") + "\n")
        return path.read_text().strip()

    def running(self) -> list[int]:
        return [n.node_id for n in self.nodes if n.running_pid()]

    def up(self, timeout: float = 180.0) -> bool:
        """Start every node not running and wait until each is registered; True when this started one."""
        cluster_id = self._cluster_id()
        started = False
        for node in self.nodes:
            if node.running_pid():
                continue
            if port_open(node.host, node.port) or port_open(node.host, node.controller_port):
                raise ServiceError(
                    f"port {node.port} or {node.controller_port} is already used by a process this "
                    "project did not start"
                )
            node.prepare(cluster_id)
            node.spawn()
            started = True
        for node in self.nodes:
            wait_until(node.ready, timeout, f"Kafka node {node.node_id} at {node.bootstrap}", interval=0.5)
        return started

    def start(self, node_id: int, timeout: float = 180.0) -> None:
        """Start one node again (after `kill`) and wait until it is registered."""
        node = self.node(node_id)
        if not node.running_pid():
            node.spawn()
        wait_until(node.ready, timeout, f"Kafka node {node_id} at {node.bootstrap}", interval=0.5)

    def kill(self, node_id: int) -> bool:
        return self.node(node_id).kill()

    def under_replicated(self) -> int | None:
        """Partitions whose in-sync replicas are fewer than their replicas (None when no node answers)."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
        except (KafkaError, OSError):
            return None
        try:
            # kafka-python 3 names them isr_nodes / replica_nodes (older: isr / replicas); a partition
            # described without an ISR (its leader away, mid-election) counts as under-replicated.
            return sum(
                1
                for topic in admin.describe_topics()
                for p in topic.get("partitions") or []
                if len(p.get("isr_nodes", p.get("isr")) or [])
                < len(p.get("replica_nodes", p.get("replicas")) or [None])
            )
        except (KafkaError, OSError):
            return None
        finally:
            admin.close()

    def wait_in_sync(self, timeout: float = 180.0) -> None:
        """Wait until every partition has all its replicas in sync (the step between two restarts of a
        rolling restart: restarting the next node earlier could take a partition below its minimum ISR)."""
        wait_until(lambda: self.under_replicated() == 0, timeout, "every partition's replicas in sync", interval=1.0)

    def rolling_restart(self, graceful: bool = True, timeout: float = 180.0) -> None:
        """Restart every node in turn, as an upgrade does: stop one (SIGTERM, or kill -9), start it, wait
        until the cluster is in sync again, then the next."""
        for node in self.nodes:
            self.wait_in_sync(timeout)
            node.down() if graceful else node.kill()
            self.start(node.node_id, timeout)
        self.wait_in_sync(timeout)

    def down(self, graceful: bool = True) -> bool:
        """Stop every node at once (one after another, the last ones wait for a quorum that has gone)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            stopped = list(pool.map(lambda node: node.down(graceful=graceful), self.nodes))
        return any(stopped)

    def status(self) -> str:
        return "; ".join(f"node {n.node_id}: {n.status()}" for n in self.nodes)
