"""Thin Faust adapters: price rows into window tables, ticks into embeddings, embeddings into Postgres.

Rows for instrument i arrive on partition hash(i) and ticks on every
partition, so on tick T each partition emits for the instruments whose rows
came through it (the `members` table, kept per run and partition).
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import date

import faust

from shared.config import Settings
from shared.messages import (
    BadMessage,
    Embedding,
    PriceRow,
    Tick,
    TickDone,
    decode,
    embedding_message,
    encode,
)
from streams.sink import SinkWriter
from streams.ticks import embeddings_for_tick, record_tick, tick_config, tick_log_offset, ticks_affected
from streams.window import Window, date_of, day_number, retention_days, upsert_row

log = logging.getLogger("embedder.stream")
SEP = "\x1f"


def register(app: faust.App, settings: Settings) -> None:
    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    prices = app.topic(settings.prices_topic, partitions=settings.partitions, **raw)
    embeddings = app.topic(settings.embeddings_topic, partitions=settings.partitions, **raw)
    dead_letter = app.topic(settings.dead_letter_topic, **raw)
    table = dict(partitions=settings.partitions, key_type=str, value_type=bytes)
    windows = app.Table("windows", **table)
    members = app.Table("members", **table)
    tick_logs = app.Table("ticks", **table)

    async def dead_letter_send(event: faust.EventT, reason: str) -> None:
        msg = event.message
        log.warning("dead-letter %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, reason)
        value = json.dumps({
            "reason": reason, "topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
            "payload": (event.value or b"")[:4096].decode("utf-8", "replace"),
        }).encode()
        await dead_letter.send(key=event.key, value=value)

    def member_ids(run: str, partition: int) -> list[str]:
        value = members.get(f"{run}{SEP}{partition}")
        return value.decode().split(SEP) if value else []

    async def send_embeddings(run: str, partition: int, items, as_of: date, window_days: int) -> int:
        """Send embeddings and wait until Kafka has acknowledged all of them.

        Callers record the work as done in a table only afterwards: a changelog write can reach
        Kafka while messages to another topic buffered before it are lost (e.g. kill -9), and a
        re-delivered event whose state says "done" is not computed again.
        """
        pending = []
        for instrument_id, model_id, vector in items:
            msg = embedding_message(run, instrument_id, as_of, model_id, window_days, vector)
            pending.append(await embeddings.send(key=instrument_id.encode(), value=encode(msg), partition=partition))
        if pending:
            await asyncio.gather(*pending)
        return len(pending)

    async def on_row(row: PriceRow, partition: int, offset: int) -> None:
        """Update the window; a late or corrected row re-emits every processed tick it falls in."""
        key = f"{row.run}{SEP}{row.instrument_id}"
        run_part = f"{row.run}{SEP}{partition}"
        state = windows.get(key)
        if Window.parse(state).applied_offset >= offset:
            return  # re-delivered after a restart or rebalance: already in the restored state
        keep = retention_days(row.window_days or settings.window_days, settings.retention_slack_days)
        new_state = upsert_row(state, row.trade_date, row.close, row.volume, keep, offset)
        log_state = tick_logs.get(run_part)
        affected: list[int] = []
        if log_state:
            w, models, days = tick_config(log_state)
            affected = ticks_affected(days, day_number(row.trade_date), w)
            window = Window.parse(new_state)
            if any(not window.covers(t, w) for t in affected):
                raise BadMessage(
                    f"correction of {row.trade_date} is older than the stream keeps ({keep} days); "
                    "recompute it with `embedder replay --direct`")
        ids = member_ids(row.run, partition)
        if row.instrument_id not in ids:  # idempotent, so it may come first
            ids.append(row.instrument_id)
            members[run_part] = SEP.join(sorted(ids)).encode()
        for tick_day in affected:  # before the state write: see send_embeddings
            as_of = date_of(tick_day)
            items = embeddings_for_tick([(row.instrument_id, new_state)], as_of, w, models)
            await send_embeddings(row.run, partition, items, as_of, w)
        windows[key] = new_state

    async def on_tick(tick: Tick, partition: int, event: faust.EventT) -> None:
        """Emit the tick's embeddings for this partition's instruments, then a completion marker."""
        run_part = f"{tick.run}{SEP}{partition}"
        log_state = tick_logs.get(run_part)
        redelivered = event.message.offset <= tick_log_offset(log_state)
        day = day_number(tick.as_of)
        states, uncovered = [], []
        for instrument_id in member_ids(tick.run, partition):
            state = windows.get(f"{tick.run}{SEP}{instrument_id}")
            (states if Window.parse(state).covers(day, tick.window_days) else uncovered).append((instrument_id, state))
        if uncovered and not redelivered:
            # Rows far newer than the tick arrived before it: the look-back is gone. Keep it visible.
            await dead_letter_send(event, f"tick {tick.as_of}: windows of {len(uncovered)} instrument(s) "
                                          f"({', '.join(i for i, _ in uncovered[:5])}) no longer hold the look-back; "
                                          "recompute them with `embedder replay --direct`")
        items = embeddings_for_tick(states, tick.as_of, tick.window_days, tick.models)
        emitted = await send_embeddings(tick.run, partition, items, tick.as_of, tick.window_days)
        keep = retention_days(tick.window_days, settings.retention_slack_days)
        tick_logs[run_part] = record_tick(log_state, day, tick.window_days, tick.models, keep, event.message.offset)
        done = TickDone(run=tick.run, p=partition, d=tick.as_of, n=emitted)
        await embeddings.send(key=b"", value=encode(done), partition=partition)

    @app.agent(prices, name="prices")
    async def process_prices(stream):
        async for event in stream.events():
            partition = event.message.partition
            try:
                message = decode(event.value)
                if isinstance(message, PriceRow):
                    await on_row(message, partition, event.message.offset)
                elif isinstance(message, Tick):
                    await on_tick(message, partition, event)
                else:
                    raise BadMessage(f"unexpected message kind {message.kind!r} on the prices topic")
            except BadMessage as e:
                await dead_letter_send(event, e.reason)

    writer = SinkWriter(settings.database_url)

    @app.agent(embeddings, name="sink")
    async def sink(stream):
        # noack_take, not take: take() acks its buffer in a `finally`, so a worker stopped while the
        # database write is in flight would commit offsets for a batch that never reached Postgres.
        # Here events are acked only after the commit; anything unacked is delivered again.
        async for events in stream.noack_take(settings.sink_batch_size, within=settings.sink_batch_seconds):
            rows: list[Embedding] = []
            done: list[TickDone] = []
            for event in events:
                try:
                    message = decode(event.value)
                except BadMessage as e:
                    log.error("undecodable message on the embeddings topic: %s", e.reason)
                    continue
                if isinstance(message, Embedding):
                    rows.append(message)
                elif isinstance(message, TickDone):
                    done.append(message)
            await asyncio.to_thread(writer.write_until_committed, rows, done)
            for event in events:
                event.ack()
