"""Publishing to the prices topic with kafka-python (acks=all, idempotent); `flush` surfaces errors."""
from __future__ import annotations

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from shared.config import Settings
from shared.errors import ServiceUnavailable
from shared.messages import PriceRow, RowBatch, RunEnd, Tick, encode


def partition_for(instrument_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the key `instrument_id` (murmur2, as in Java)."""
    return (murmur2(instrument_id.encode()) & 0x7FFFFFFF) % partitions


class PricePublisher:
    """Rows keyed by instrument_id; ticks sent explicitly to every partition after their rows."""

    def __init__(self, settings: Settings):
        self.topic = settings.prices_topic
        self.partitions = settings.partitions
        try:
            self.producer = KafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap_servers,
                acks="all",
                enable_idempotence=True,
                linger_ms=20,
                batch_size=256 * 1024,
                max_in_flight_requests_per_connection=5,
            )
        except (KafkaError, OSError) as e:
            raise ServiceUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {e}") from None
        self._pending = []

    def row(self, row: PriceRow) -> None:
        self._pending.append(self.producer.send(self.topic, key=row.instrument_id.encode(), value=encode(row)))

    def row_unchecked(self, run: str, instrument_id: str, trade_date, close: float, volume: float) -> None:
        """Publish a captured row as it is, even if invalid: the stream dead-letters it with a reason."""
        row = PriceRow.model_construct(run=run, instrument_id=instrument_id, trade_date=trade_date, close=close,
                                       volume=volume, window_days=None)
        self._pending.append(self.producer.send(self.topic, key=(instrument_id or "").encode(), value=encode(row)))

    def row_batch(self, partition: int, batch: RowBatch) -> None:
        """Rows of one partition's instruments (see `partition_for`) in one message."""
        self._pending.append(self.producer.send(self.topic, value=encode(batch), partition=partition))

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
