"""Creating the project's topics with the right partition counts before anything uses them.

Faust requires a table's changelog to have as many partitions as its source
topic, and auto-created topics get one partition, so topics are always made here.
The Kafka client is imported where a topic is made, not with the names: commands
that only queue work in PostgreSQL (a query, a tick) never load it (~0.07 s).
"""

from __future__ import annotations

import functools
import time
import zlib
from typing import TYPE_CHECKING

from shared.broker.kafka_config import kafka_python_config, topic_configs
from shared.contract.config import Settings
from shared.contract.errors import ServiceUnavailable

if TYPE_CHECKING:
    from kafka.admin import KafkaAdminClient


@functools.lru_cache(maxsize=1 << 17)
def partition_for(instrument_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the key `instrument_id` (murmur2, as in Java):
    where an instrument's rows go, live or replayed, so its window lives on one partition. Remembered: the
    relay asks it for every captured row, the same ids each day, and murmur2 is pure Python."""
    from kafka.partitioner.default import murmur2

    return (murmur2(instrument_id.encode()) & 0x7FFFFFFF) % partitions


HEAD_BLOCKS = 32
"""Blocks a partition keeps its live windows' heads in (`streams.window_store`): ~20 heads (~12 KB) a block at
5,000 instruments on 8 partitions, ~80 (~50 KB) at 20,000; a block stays under Kafka's 1 MB message up to
~400,000 instruments."""


def head_block(instrument_id: str) -> int:
    """The block of its partition an instrument's live window head is kept in (stable across processes). The
    relay sends a partition's rows in this order, so each message of a live day rewrites few blocks."""
    return zlib.crc32(instrument_id.encode()) % HEAD_BLOCKS


def admin_client(settings: Settings) -> KafkaAdminClient:
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        return KafkaAdminClient(**kafka_python_config(settings), request_timeout_ms=15000)
    except (KafkaError, OSError) as e:
        raise ServiceUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {e}") from None


STATE_FORMAT = 5
"""The format of the worker's state (`streams/state.py`, windows kept in chunks by `streams/window_store.py`):
5 keeps the live heads in blocks per partition (`window_store.block_of`), 4 added each window's stamp
(`shared.store.write_claims`), 3 kept no stamp, 2 kept each window as one value, 1 was
the unversioned tables of the releases before it. Table names
carry it, so a worker never reads state of another format; the database records which format a worker
group holds (`live.bootstrap.reconcile_state_format`), and a worker meeting
another one rebuilds its live windows from prices_daily (the bootstrap)."""


def table_name(base: str) -> str:
    """The Faust table (and changelog) name of `base` in this state format."""
    return f"{base}_v{STATE_FORMAT}"


WINDOWS, RUNS, REPLAY_WINDOWS, REPLAY_RUNS = (
    table_name(t) for t in ("windows", "runs", "replay_windows", "replay_runs")
)


def stream_tables(generation: int = 0) -> tuple[str, str, str, str]:
    """(windows, runs, replay windows, replay runs): the worker's Faust tables in a live layout generation
    (their changelogs are made by `ensure_topics` with the source topic's partition count)
    (`shared.store.live_layout`; a repartition starts a new one, so no worker reads state partitioned otherwise)."""
    suffix = f"_g{generation}" if generation else ""
    return (f"{WINDOWS}{suffix}", f"{RUNS}{suffix}", f"{REPLAY_WINDOWS}{suffix}", f"{REPLAY_RUNS}{suffix}")


EAGER_COMPACTION = {
    "cleanup.policy": "compact",
    "segment.ms": "60000",  # roll segments every minute: only closed segments are compacted
    "segment.bytes": str(16 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "60000",  # tombstones of finished replays go after a minute
    "min.compaction.lag.ms": "0",
}
"""Changelog settings of the replay tables: a finished replay tombstones its keys, and these make the
cleaner drop them within minutes, so a new worker restores the live state and little else."""


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


def wait_until_known(admin: KafkaAdminClient, names: set[str], timeout: float = 30.0) -> None:
    """New topics reach the broker's metadata a moment after creation; users of them need it there."""
    deadline = time.monotonic() + timeout
    while not names <= set(admin.list_topics()):
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"topics {sorted(names)} not visible {timeout:.0f}s after creation")
        time.sleep(0.1)


def ensure_topics(settings: Settings) -> None:
    """Create the prices, dead-letter and changelog topics where missing (idempotent); rides out a broker
    loss (`shared.broker.kafka_retry`)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from shared.broker.kafka_retry import RETRIABLE, with_retries

    def attempt() -> None:
        admin = KafkaAdminClient(**kafka_python_config(settings), request_timeout_ms=15000)
        try:
            existing = set(admin.list_topics())
            rf = settings.topic_replication_factor
            wanted = [
                NewTopic(
                    settings.prices_topic,
                    settings.partitions,
                    rf,
                    topic_configs=topic_configs(settings, settings.prices_retention_hours),
                ),
                NewTopic(
                    settings.dead_letter_topic,
                    1,
                    rf,
                    topic_configs=topic_configs(settings, settings.dead_letter_retention_hours),
                ),
            ] + [
                NewTopic(
                    changelog_topic(settings, t),
                    settings.partitions,
                    rf,
                    topic_configs={
                        **topic_configs(settings),
                        **(EAGER_COMPACTION if k >= 2 else {"cleanup.policy": "compact"}),
                    },
                )  # replay tables
                for k, t in enumerate(stream_tables(settings.live_generation))
            ]
            missing = [t for t in wanted if t.name not in existing]
            if missing:
                try:
                    admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass
                wait_until_known(admin, {t.name for t in missing})
        finally:
            admin.close()

    try:
        with_retries("creating the project's topics", attempt)
    except RETRIABLE as e:
        raise ServiceUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {e}") from None
