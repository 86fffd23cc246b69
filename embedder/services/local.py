"""`embedder services up|down|status`: both local services together."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedder.services.kafka import LocalKafka
from embedder.services.postgres import LocalPostgres


@dataclass(frozen=True)
class LocalServices:
    kafka: LocalKafka
    postgres: LocalPostgres

    @classmethod
    def under(cls, services_dir: Path) -> "LocalServices":
        return cls(LocalKafka(services_dir / "kafka"), LocalPostgres(services_dir / "postgres"))

    def env(self) -> dict[str, str]:
        """The connection settings a client should export."""
        return {"KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap, "DATABASE_URL": self.postgres.url}
