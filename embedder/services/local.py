"""`embedder services up|down|status`: both local services together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedder.services.kafka import LocalKafka
from embedder.services.kafka_cluster import LocalKafkaCluster
from embedder.services.postgres import LocalPostgres


@dataclass(frozen=True)
class LocalServices:
    kafka: LocalKafka
    postgres: LocalPostgres
    cluster: LocalKafkaCluster
    """The 3-node cluster `services up --brokers 3` runs instead of the single broker."""

    @classmethod
    def under(cls, services_dir: Path) -> LocalServices:
        return cls(
            LocalKafka(services_dir / "kafka"),
            LocalPostgres(services_dir / "postgres"),
            LocalKafkaCluster(services_dir / "kafka-cluster"),
        )

    @property
    def clustered(self) -> bool:
        """The cluster runs (some node of it)."""
        return bool(self.cluster.running())

    def env(self, cluster: bool = False) -> dict[str, str]:
        """The connection settings a client should export: the single broker's, or the cluster's."""
        if cluster:
            return {
                "KAFKA_BOOTSTRAP_SERVERS": self.cluster.bootstrap,
                "DATABASE_URL": self.postgres.url,
                "EMBEDDER_TOPIC_REPLICATION_FACTOR": str(self.cluster.nodes[0].replication),
                "EMBEDDER_TOPIC_MIN_INSYNC_REPLICAS": str(max(self.cluster.nodes[0].replication - 1, 1)),
            }
        return {"KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap, "DATABASE_URL": self.postgres.url}
