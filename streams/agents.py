"""Thin Faust adapters: price rows into window tables, ticks into embeddings, embeddings into Postgres.

Rows for instrument i arrive on partition hash(i) and ticks on every
partition, so on tick T each partition emits for the instruments whose rows
came through it (the `members` table, kept per run and partition).
"""
from __future__ import annotations

import asyncio
import json
import logging

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
from streams.ticks import embeddings_for_tick
from streams.window import retention_days, upsert_row

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

    async def on_row(row: PriceRow, partition: int) -> None:
        key = f"{row.run}{SEP}{row.instrument_id}"
        keep = retention_days(row.window_days or settings.window_days, settings.retention_slack_days)
        windows[key] = upsert_row(windows.get(key), row.trade_date, row.close, row.volume, keep)
        ids = member_ids(row.run, partition)
        if row.instrument_id not in ids:
            ids.append(row.instrument_id)
            members[f"{row.run}{SEP}{partition}"] = SEP.join(sorted(ids)).encode()

    async def on_tick(tick: Tick, partition: int) -> None:
        ids = member_ids(tick.run, partition)
        states = [(i, windows.get(f"{tick.run}{SEP}{i}")) for i in ids]
        emitted = 0
        for instrument_id, model_id, vector in embeddings_for_tick(states, tick.as_of, tick.window_days, tick.models):
            msg = embedding_message(tick.run, instrument_id, tick.as_of, model_id, tick.window_days, vector)
            await embeddings.send(key=instrument_id.encode(), value=encode(msg), partition=partition)
            emitted += 1
        done = TickDone(run=tick.run, p=partition, d=tick.as_of, n=emitted)
        await embeddings.send(key=b"", value=encode(done), partition=partition)

    @app.agent(prices, name="prices")
    async def process_prices(stream):
        async for event in stream.events():
            partition = event.message.partition
            try:
                message = decode(event.value)
                if isinstance(message, PriceRow):
                    await on_row(message, partition)
                elif isinstance(message, Tick):
                    await on_tick(message, partition)
                else:
                    raise BadMessage(f"unexpected message kind {message.kind!r} on the prices topic")
            except BadMessage as e:
                await dead_letter_send(event, e.reason)

    writer = SinkWriter(settings.database_url)

    @app.agent(embeddings, name="sink")
    async def sink(stream):
        async for batch in stream.take(settings.sink_batch_size, within=settings.sink_batch_seconds):
            rows: list[Embedding] = []
            done: list[TickDone] = []
            for value in batch:
                try:
                    message = decode(value)
                except BadMessage as e:
                    log.error("undecodable message on the embeddings topic: %s", e.reason)
                    continue
                if isinstance(message, Embedding):
                    rows.append(message)
                elif isinstance(message, TickDone):
                    done.append(message)
            # The write retries until committed: the batch is acked only after PostgreSQL has it.
            await asyncio.to_thread(writer.write_until_committed, rows, done)
