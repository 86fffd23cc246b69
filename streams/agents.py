"""Thin Faust adapters: the prices agent feeds a `PartitionProcessor` and applies its effects; the sink
agent writes embedding batches to PostgreSQL.

All stream semantics live in `streams/processor.py` (no Faust there). This module
does the I/O around it: the registry's database reads before an event, and the
commit order after it (`apply_effects`).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import faust

from shared.config import Settings
from shared.messages import (
    LIVE_RUN,
    BadMessage,
    EmbeddingBatch,
    PriceRow,
    RowBatch,
    Tick,
    dead_letter_record,
    decode,
    decode_embeddings,
    encode_embeddings,
)
from shared.metrics import StreamMetrics
from streams.gaps import OffsetGuard
from streams.processor import DeadLetter, Effects, PartitionProcessor, ProcessorConfig, TickReport
from streams.registry import DbRegistry
from streams.sink import SinkWriter

log = logging.getLogger("embedder.stream")
LostWindows = Callable[[list[str]], None]
"""Told (in a thread) which live instruments a tick found without any window, so the bootstrap
loads them again."""


def register(app: faust.App, settings: Settings, metrics: StreamMetrics,
             on_lost_windows: LostWindows | None = None) -> None:
    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    prices = app.topic(settings.prices_topic, partitions=settings.partitions, **raw)
    embeddings = app.topic(settings.embeddings_topic, partitions=settings.partitions, **raw)
    dead_letter = app.topic(settings.dead_letter_topic, **raw)
    table = dict(partitions=settings.partitions, key_type=str, value_type=bytes)
    windows = app.Table("windows", **table)
    runs = app.Table("runs", **table)
    registry = DbRegistry(settings.database_url, settings.partitions)
    config = ProcessorConfig(settings.partitions, settings.window_days, settings.retention_slack_days)
    processors: dict[int, PartitionProcessor] = {}
    guard = OffsetGuard(settings.prices_topic)

    def processor_of(partition: int) -> PartitionProcessor:
        proc = processors.get(partition)
        if proc is None:
            proc = processors[partition] = PartitionProcessor(partition, config, windows, runs, registry)
        return proc

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        # Another worker may change these partitions' state now: parsed caches are stale.
        processors.clear()
        guard.forget()

    async def prepare(message) -> None:
        """The database reads the processor will need, done before it runs (in a thread)."""
        if isinstance(message, RowBatch):
            ids = {r[0] for r in message.rows}
            if registry.unknown(ids):
                await asyncio.to_thread(registry.learn, ids)
        elif isinstance(message, PriceRow):
            if registry.unknown({message.instrument_id}):
                await asyncio.to_thread(registry.learn, {message.instrument_id})
        elif isinstance(message, Tick) and message.run == LIVE_RUN:
            await asyncio.to_thread(registry.refresh, (message.source_id, message.as_of, message.scope))

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
        """The commit order, written once. A crash between two steps re-delivers the event, and
        every step is safe to repeat.

        1. Dead letters go to the dead-letter topic.
        2. Embedding batches go to the embeddings topic, in order, on this event's partition (the
           sink writes them; a tick's last batch carries its completion).
        3. When the state write records work that a re-delivery would skip (`fx.output_before_state`:
           windows written beside corrections), both are awaited until Kafka has acknowledged them:
           a changelog record can reach Kafka while messages to another topic, buffered before it,
           die with the process. A tick is computed whole whenever it comes, so it does not wait
           (that wait, once per tick, had the prices agent idle a third of a replay).
        4. The state writes go to the tables, and so to their changelogs (a re-delivered event then
           finds its offset applied and changes nothing).
        5. The caller returns and faust acks the event; its offset is committed on faust's timer,
           after the producer is flushed, so the changelog is durable before the offset counts.
        """
        pending = await send_dead_letters(event, fx.dead_letters)  # 1
        partition = event.message.partition
        for batch in fx.embeddings:  # 2
            metrics.embeddings_emitted.inc(sum(1 for item in batch.items if item[3]))
            pending.append(await embeddings.send(key=b"", value=encode_embeddings(batch), partition=partition))
        if pending and fx.output_before_state:
            await asyncio.gather(*pending)  # 3
        for key, value in fx.writes.windows.items():  # 4
            if value is None:
                windows.pop(key, None)
            else:
                windows[key] = value
        for key, value in fx.writes.runs.items():
            if value is None:
                runs.pop(key, None)
            else:
                runs[key] = value

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
            log.warning("%s; without enough history: %d (%s); without a row on %s: %d (%s)", line, short,
                        ", ".join(tick.insufficient[:8]), tick.dates[-1], len(tick.missing_today),
                        ", ".join(tick.missing_today[:8]))
        else:
            log.info(line)

    async def on_event(event: faust.EventT) -> None:
        partition, offset = event.message.partition, event.message.offset
        proc = processor_of(partition)
        try:
            message = decode(event.value)
            metrics.events.labels(message.kind).inc()
            await prepare(message)
            fx = proc.process(offset, message)
        except BadMessage as e:
            metrics.events.labels("bad").inc()
            fx = Effects(dead_letters=[DeadLetter(e.reason, event.value or b"")])
        metrics.rows.inc(fx.rows)
        try:
            await apply_effects(event, fx)
        except BaseException:
            proc.forget()  # its caches hold writes that may not have been applied
            raise
        for tick in fx.ticks:
            report(partition, tick)
        if fx.lost_windows and on_lost_windows is not None:
            log.warning("live tick: %d instrument(s) of partition %s have no window (%s); loading them from "
                        "prices_daily", len(fx.lost_windows), partition, ", ".join(fx.lost_windows[:8]))
            await asyncio.to_thread(on_lost_windows, fx.lost_windows)

    @app.agent(prices, name="prices")
    async def process_prices(stream):
        async for event in stream.events():
            partition, offset = event.message.partition, event.message.offset
            metrics.offset_gaps.inc(guard.skipped(partition, offset))
            await on_event(event)
            guard.applied(partition, offset)

    writer = SinkWriter(settings.database_url, metrics=metrics)

    @app.agent(embeddings, name="sink")
    async def sink(stream):
        # noack_take, not take: take() acks its buffer in a `finally`, so a worker stopped while the
        # database write is in flight would commit offsets for a batch that never reached Postgres.
        # Here events are acked only after the commit; anything unacked is delivered again.
        async for events in stream.noack_take(settings.sink_batch_size, within=settings.sink_batch_seconds):
            batches: list[EmbeddingBatch] = []
            for event in events:
                try:
                    batches.append(decode_embeddings(event.value))
                except BadMessage as e:
                    msg = event.message
                    log.error("%s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, e.reason)
            await asyncio.to_thread(writer.write_until_committed, batches)
            for event in events:
                event.ack()
