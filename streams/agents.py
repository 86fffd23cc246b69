"""The thin Faust adapter: the prices agent feeds a `PartitionProcessor` and applies its effects.

All stream semantics live in `streams/processor.py` (no Faust there). This module
does the I/O around it: the registry's database reads before an event (and a historical query's
look-back), and the commit order after it (`apply_effects`). The sink is in this process
(`streams/sink.py`): events are acked by hand, each once what it produced is
committed in PostgreSQL, and faust commits offsets only up to the first unacked
event of a partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import faust

from shared.config import Settings
from shared.messages import LIVE_RUN, BadMessage, PriceRow, RowBatch, Tick, dead_letter_record, decode
from shared.metrics import StreamMetrics
from shared.topics import stream_tables
from streams.gaps import OffsetGuard
from streams.lookback import DbLookback
from streams.processor import DeadLetter, Effects, PartitionProcessor, ProcessorConfig, TickReport
from streams.registry import DbRegistry
from streams.sink import BatchingSink, SinkWriter
from streams.state import ByRun
from streams.window import Window
from streams.window_store import value_bytes

log = logging.getLogger("embedder.stream")
ROCKSDB_OPTIONS = {
    "write_buffer_size": 2 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 4 * 1024 * 1024,
    "block_cache_compressed_size": 1024 * 1024,
}
"""Per RocksDB database (one per table and partition: 32 in a worker holding 8 partitions). faust's
defaults (64 MB memtables x 3, a 2 GB block cache, each) let a worker of 5,000 instruments grow to
0.5 GB; its values are windows of a few KB, so small buffers serve."""
LostWindows = Callable[[list[str]], None]
"""Told (in a thread) which live instruments a tick found without any window, so the bootstrap
loads them again."""


def register(
    app: faust.App, settings: Settings, metrics: StreamMetrics, on_lost_windows: LostWindows | None = None
) -> BatchingSink:
    raw: dict[str, Any] = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    prices = app.topic(settings.prices_topic, partitions=settings.partitions, **raw)
    dead_letter = app.topic(settings.dead_letter_topic, **raw)
    table: dict[str, Any] = dict(
        partitions=settings.partitions, key_type=bytes, value_type=bytes, options=dict(ROCKSDB_OPTIONS)
    )
    windows_name, runs_name, replay_windows_name, replay_runs_name = stream_tables(settings.live_generation)
    windows = ByRun(app.Table(windows_name, **table), app.Table(replay_windows_name, **table), raw_keys=True)
    runs = ByRun(app.Table(runs_name, **table), app.Table(replay_runs_name, **table), raw_keys=True)
    registry = DbRegistry(settings.database_url, settings.partitions)
    lookback = DbLookback(settings.database_url)
    config = ProcessorConfig(settings.partitions, settings.window_days, settings.retention_slack_days)
    processors: dict[int, PartitionProcessor] = {}
    guard = OffsetGuard(settings.prices_topic)
    sink = BatchingSink(
        SinkWriter(settings.database_url, metrics=metrics),
        settings.sink_batch_embeddings,
        settings.sink_batch_seconds,
        settings.sink_max_pending_embeddings,
    )

    def processor_of(partition: int) -> PartitionProcessor:
        proc = processors.get(partition)
        if proc is None:
            proc = processors[partition] = PartitionProcessor(partition, config, windows, runs, registry)
        return proc

    class CommittedOffsets(faust.Sensor):
        """Faust reports every offset commit here: ticks before a committed offset never come again."""

        def on_tp_commit(self, tp_offsets) -> None:
            for tp, offset in tp_offsets.items():
                proc = processors.get(tp.partition)
                if tp.topic == settings.prices_topic and proc is not None and offset is not None:
                    proc.committed(offset)

    app.sensors.add(CommittedOffsets())

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust types its async receivers narrowly
    async def on_revoked(sender, revoked, **kwargs) -> None:
        # Another worker may change these partitions' state now: parsed caches are stale.
        processors.clear()
        guard.forget()

    async def prepare(message, partition: int) -> dict[str, Window] | None:
        """The database reads the processor will need, done before it runs (in a thread); returns the
        look-back of a query tick that reads it from the database."""
        if isinstance(message, Tick) and message.lookback_from_db:
            mine = sorted(i for i in set(message.instrument_ids or ()) if registry.partition(i) == partition)
            return await asyncio.to_thread(lookback.read, mine, message.dates, message.window_days)
        if isinstance(message, RowBatch):
            ids = {r[0] for r in message.rows}
            if registry.unknown(ids):
                await asyncio.to_thread(registry.learn, ids)
        elif isinstance(message, PriceRow):
            if registry.unknown({message.instrument_id}):
                await asyncio.to_thread(registry.learn, {message.instrument_id})
        elif isinstance(message, Tick) and message.run == LIVE_RUN:
            await asyncio.to_thread(registry.refresh, (message.source_id, message.as_of, message.scope))
        return None

    async def send_dead_letters(event: faust.EventT, letters: list[DeadLetter]) -> list:
        msg = event.message
        pending = []
        for letter in letters:
            log.warning("dead-letter %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, letter.reason)
            value = dead_letter_record(letter.reason, msg.topic, msg.partition, msg.offset, letter.payload)
            pending.append(await dead_letter.send(key=event.key, value=value))
        metrics.dead_letters.inc(len(letters))
        return pending

    async def apply_effects(event: faust.EventT, fx: Effects) -> None:
        """The commit order, written once. A crash between two steps re-delivers the event (it is
        acked only at the end), and every step is safe to repeat.

        1. Dead letters go to the dead-letter topic.
        2. Embedding batches go to the sink, in order (it writes them with the ticks they complete
           in one PostgreSQL transaction).
        3. When the state write records work that a re-delivery would skip (`fx.output_before_state`:
           windows written beside corrections), both are awaited: the sink's commit and Kafka's
           acknowledgement. A tick is computed whole whenever it comes, so it does not wait.
        4. The state writes go to the tables, and so to their changelogs (a re-delivered event then
           finds its offset applied and changes nothing).
        5. The event is acked: at once when it produced nothing for the sink, else by the sink after
           its commit. Faust commits a partition's offset up to its first unacked event, after
           flushing the producer, so changelogs and dead letters are durable before it counts.
        """
        pending = await send_dead_letters(event, fx.dead_letters)  # 1
        emitted = sum(1 for b in fx.embeddings for item in b.items if item.vector)
        metrics.embeddings_emitted.inc(emitted)
        acked_by_sink = bool(fx.embeddings) and not fx.output_before_state
        if fx.output_before_state:  # 2 and 3
            await sink.write(fx.embeddings)
            if pending:
                await asyncio.gather(*pending)
        elif acked_by_sink:  # 2
            await sink.submit(fx.embeddings, event.ack)
        for key, value in fx.writes.windows.items():  # 4 (a window's chunks before its head)
            windows.put(key, value)
        for key, value in fx.writes.runs.items():
            runs.put(key, value)
        metrics.state_bytes.labels("windows").inc(value_bytes(fx.writes.windows.values()))
        metrics.state_bytes.labels("runs").inc(value_bytes(fx.writes.runs.values()))
        if not acked_by_sink:  # 5
            event.ack()

    def report(partition: int, tick: TickReport) -> None:
        """Count a tick's instruments and log one line for it (not again when it is re-delivered)."""
        if tick.redelivered:
            return
        short = len(tick.insufficient)
        metrics.tick_instruments.labels("embedded").inc(tick.embedded)
        metrics.tick_instruments.labels("insufficient_history").inc(short)
        metrics.tick_instruments.labels("missing_today").inc(len(tick.missing_today))
        if tick.run != LIVE_RUN:
            return
        when = f"{tick.dates[-1]}" + (f" ({len(tick.dates)} dates)" if len(tick.dates) > 1 else "")
        line = f"live tick {when} [{tick.scope}] partition {partition}: {tick.embedded} of {tick.expected} embedded"
        if short or tick.missing_today:
            log.warning(
                "%s; without enough history: %d (%s); without a row on %s: %d (%s)",
                line,
                short,
                ", ".join(tick.insufficient[:8]),
                tick.dates[-1],
                len(tick.missing_today),
                ", ".join(tick.missing_today[:8]),
            )
        else:
            log.info(line)

    async def on_event(event: faust.EventT) -> None:
        partition, offset = event.message.partition, event.message.offset
        proc = processor_of(partition)
        try:
            message = decode(event.value)
            metrics.events.labels(message.kind).inc()
            fx = proc.process(offset, message, await prepare(message, partition))
        except BadMessage as e:
            metrics.events.labels("bad").inc()
            fx = Effects(dead_letters=[DeadLetter(e.reason, event.value or b"")])
        metrics.rows.inc(fx.rows)
        metrics.corrections_to_database.inc(fx.left_to_database)
        try:
            await apply_effects(event, fx)
        except BaseException:
            proc.forget()  # its caches hold writes that may not have been applied
            raise
        for tick in fx.ticks:
            report(partition, tick)
        if fx.lost_windows and on_lost_windows is not None:
            log.warning(
                "live tick: %d instrument(s) of partition %s have no window (%s); loading them from prices_daily",
                len(fx.lost_windows),
                partition,
                ", ".join(fx.lost_windows[:8]),
            )
            await asyncio.to_thread(on_lost_windows, fx.lost_windows)

    @app.agent(prices, name="prices")
    async def process_prices(stream):
        # noack: an event is acked by apply_effects (step 5), after the sink committed its output.
        async for event in stream.noack().events():
            partition, offset = event.message.partition, event.message.offset
            metrics.offset_gaps.inc(guard.skipped(partition, offset))
            await on_event(event)
            guard.applied(partition, offset)

    return sink
