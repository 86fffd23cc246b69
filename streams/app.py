"""`create_app(settings)`: the Faust app, built from settings with no import-time configuration."""

from __future__ import annotations

from pathlib import Path

import faust

from shared.broker.kafka_config import faust_broker_options
from shared.contract.config import Settings
from shared.metrics import StreamMetrics
from streams import faust_fixes
from streams.adapter import LostWindows
from streams.agents import CommitMonitor, register
from streams.sink import BatchingSink


def create_app(
    settings: Settings,
    datadir: Path,
    metrics: StreamMetrics,
    *,
    store: str = "rocksdb://",
    on_lost_windows: LostWindows | None = None,
) -> tuple[faust.App, BatchingSink]:
    """A Faust app with the project's topics, tables and agents wired in, and its sink (the caller stops
    it when the app has stopped: what is queued is written first)."""
    faust_fixes.apply(settings.allow_unverified_faust, settings.consumer_fetch_wait_ms)
    app = faust.App(
        settings.app_id,
        **faust_broker_options(settings),
        store=store,
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.topic_replication_factor,
        processing_guarantee="at_least_once",
        monitor=CommitMonitor(),
        producer_acks=-1,
        # A live day writes a changelog record per window: batched for 5 ms in batches up to 256 KB, they
        # go out in a few produce requests per partition instead of one small request each.
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # A worker killed without leaving the group holds its partitions until the session times out.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        broker_commit_interval=settings.commit_interval_seconds,
        # On a rebalance, finish the event in flight before the producer flush, the commit and the
        # table recovery: otherwise its table writes race the recovery, which can put an older
        # changelog value back over them while the event's offset still gets committed (rows lost).
        stream_wait_empty=True,
    )
    sink = register(app, settings, metrics, on_lost_windows)
    return app, sink
