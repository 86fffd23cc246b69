"""The faust wiring: the prices agent, its topics and tables, the commit monitor and revocation, all handed
to `streams.adapter.PricesAdapter`, which holds the I/O around the processors and the commit order.

All stream semantics live in `streams/processor.py` (no Faust there). The sink is in this process
(`streams/sink.py`): events are acked by hand, each once what it produced is committed in PostgreSQL,
and faust commits offsets only up to the first unacked event of a partition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import faust
from faust.types import TP

from shared.broker.topics import stream_tables
from shared.contract.config import Settings
from shared.metrics import StreamMetrics
from streams.adapter import LostWindows, PricesAdapter
from streams.gaps import OffsetGuard
from streams.lookback import DbLookback
from streams.processor import ProcessorConfig
from streams.registry import DbRegistry
from streams.sink import BatchingSink, database_sink
from streams.state import ByRun

ROCKSDB_OPTIONS = {
    "write_buffer_size": 2 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 4 * 1024 * 1024,
    "block_cache_compressed_size": 1024 * 1024,
}
"""Per RocksDB database (one per table and partition: 32 in a worker holding 8 partitions). faust's
defaults (64 MB memtables x 3, a 2 GB block cache, each) let a worker of 5,000 instruments grow to
0.5 GB; its values are windows of a few KB, so small buffers serve."""


class CommitMonitor(faust.Monitor):
    """faust's monitor, also telling its `listeners` of every offset commit. faust reports a commit to the
    app's monitor alone (`Consumer.commit` calls `app.monitor.on_tp_commit`): a sensor added with
    `app.sensors.add` never hears of one (this project's did not, so no window ever dropped the rows of a
    committed tick: a replay's windows grew to every row since its first tick, 105 MB of changelog for the
    whole real data set instead of 41-46 MB)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.listeners: list[Callable[[Mapping[Any, int]], None]] = []

    def on_tp_commit(self, tp_offsets: MutableMapping[TP, int]) -> None:
        super().on_tp_commit(tp_offsets)
        for listener in self.listeners:
            listener(tp_offsets)


def commit_monitor(app: faust.App) -> CommitMonitor:
    """The app's `CommitMonitor` (`streams.app.create_app` gives the app one)."""
    monitor = app.monitor
    if not isinstance(monitor, CommitMonitor):
        raise TypeError(
            f"the app's monitor is {type(monitor).__name__}: commits would go unheard (pass a CommitMonitor)"
        )
    return monitor


def register(
    app: faust.App, settings: Settings, metrics: StreamMetrics, on_lost_windows: LostWindows | None = None
) -> BatchingSink:
    """The prices agent, its tables and topics, wired to a `PricesAdapter`; returns the sink, whose life
    the worker owns (`streams/worker.py` drains and stops it on shutdown)."""
    raw: dict[str, Any] = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    prices = app.topic(settings.prices_topic, partitions=settings.partitions, **raw)
    table: dict[str, Any] = dict(
        partitions=settings.partitions, key_type=bytes, value_type=bytes, options=dict(ROCKSDB_OPTIONS)
    )
    windows_name, runs_name, replay_windows_name, replay_runs_name = stream_tables(settings.live_generation)
    sink = database_sink(
        settings.database_url,
        min(settings.sink_connections, settings.partitions),
        metrics,
        settings.sink_batch_embeddings,
        settings.sink_batch_seconds,
        settings.sink_max_pending_embeddings,
    )
    adapter = PricesAdapter(
        ProcessorConfig(settings.partitions, settings.window_days, settings.retention_slack_days),
        ByRun(app.Table(windows_name, **table), app.Table(replay_windows_name, **table), raw_keys=True),
        ByRun(app.Table(runs_name, **table), app.Table(replay_runs_name, **table), raw_keys=True),
        DbRegistry(settings.database_url, settings.partitions),
        DbLookback(settings.database_url),
        sink,
        app.topic(settings.dead_letter_topic, **raw),
        metrics,
        on_lost_windows,
    )
    guard = OffsetGuard(settings.prices_topic)

    def committed(tp_offsets: Mapping[Any, int]) -> None:
        """Ticks before a committed offset never come again: their windows may drop the rows only they needed."""
        for tp, offset in tp_offsets.items():
            if tp.topic == settings.prices_topic and offset is not None:
                adapter.committed(tp.partition, offset)

    commit_monitor(app).listeners.append(committed)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust types its async receivers narrowly
    async def on_revoked(sender, revoked, **kwargs) -> None:
        adapter.revoked()
        guard.forget()

    @app.agent(prices, name="prices")
    async def process_prices(stream):
        # noack: an event is acked by the adapter's commit order (step 5), after the sink committed its output.
        async for event in stream.noack().events():
            partition, offset = event.message.partition, event.message.offset
            metrics.offset_gaps.inc(guard.skipped(partition, offset))
            await adapter.on_event(event)
            guard.applied(partition, offset)

    return sink
