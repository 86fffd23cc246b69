"""Publishing to the prices topic with kafka-python (acks=all, idempotent); `flush` surfaces errors."""

from __future__ import annotations

from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from shared.broker.kafka_config import kafka_python_config
from shared.broker.topics import partition_for
from shared.contract.config import Settings
from shared.contract.errors import ServiceUnavailable
from shared.contract.messages import PriceRow, RowBatch, RunEnd, Tick, encode

__all__ = ["PricePublisher", "partition_for"]


class PricePublisher:
    """Rows keyed by instrument_id; ticks sent explicitly to every partition after their rows."""

    def __init__(self, settings: Settings):
        self.topic = settings.prices_topic
        self.dead_letter_topic = settings.dead_letter_topic
        self.partitions = settings.partitions
        try:
            self.producer = KafkaProducer(
                **kafka_python_config(settings),
                acks="all",
                enable_idempotence=True,
                linger_ms=20,
                batch_size=256 * 1024,
                max_in_flight_requests_per_connection=5,
            )
        except (KafkaError, OSError) as e:
            raise ServiceUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {e}") from None
        self._pending: list[Any] = []

    def row(self, row: PriceRow) -> None:
        self._pending.append(self.producer.send(self.topic, key=row.instrument_id.encode(), value=encode(row)))

    def row_batch(self, partition: int, batch: RowBatch) -> None:
        """Rows of one partition's instruments (see `partition_for`) in one message."""
        self._pending.append(self.producer.send(self.topic, value=encode(batch), partition=partition))

    def dead_letter(self, record: bytes) -> None:
        """A record for the dead-letter topic (see `shared.contract.messages.dead_letter_record`)."""
        self._pending.append(self.producer.send(self.dead_letter_topic, value=record))

    def tick(self, tick: Tick | RunEnd) -> None:
        """A tick (or a run's end) goes to every partition, behind the rows sent there before it."""
        value = encode(tick)
        for p in range(self.partitions):
            self._pending.append(self.producer.send(self.topic, key=b"__tick__", value=value, partition=p))

    def flush(self, timeout: float = 60.0) -> None:
        """Block until every message sent so far is acknowledged; raise if any failed."""
        self.producer.flush(timeout=timeout)
        pending, self._pending = self._pending, []
        for future in pending:
            if future.failed():
                raise ServiceUnavailable(f"publishing to {self.topic} failed: {future.exception}")

    def close(self) -> None:
        self.producer.close()
