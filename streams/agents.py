"""Thin Faust adapters: price rows into window tables, ticks into embeddings, embeddings into Postgres.

Rows for instrument i arrive on one partition (a replay's row batches use the
partition Kafka's key hash gives i) and ticks on every partition, so on tick T
each partition emits for the instruments whose rows came through it (the
`members` table, kept per run and partition). Table writes happen inside the
event of that partition, so they land in its changelog partition.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import date

import faust
import numpy as np

from shared.config import Settings
from shared.metrics import StreamMetrics
from shared.messages import (
    BadMessage,
    LIVE_RUN,
    EmbeddingBatch,
    PriceRow,
    RowBatch,
    RunEnd,
    Tick,
    chunk_embeddings,
    decode,
    decode_embeddings,
    encode_embeddings,
    row_problem,
)
from streams.gaps import OffsetGuard
from streams.instruments import KnownInstruments
from streams.sink import SinkWriter
from streams.ticks import embeddings_at, record_tick, tick_config, tick_log_offset, ticks_affected
from streams.window import Window, day_number, retention_days, upsert_rows

log = logging.getLogger("embedder.stream")
SEP = "\x1f"
Row = tuple[str, date, float, float]


def register(app: faust.App, settings: Settings, metrics: StreamMetrics) -> None:
    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    prices = app.topic(settings.prices_topic, partitions=settings.partitions, **raw)
    embeddings = app.topic(settings.embeddings_topic, partitions=settings.partitions, **raw)
    dead_letter = app.topic(settings.dead_letter_topic, **raw)
    table = dict(partitions=settings.partitions, key_type=str, value_type=bytes)
    windows = app.Table("windows", **table)
    members = app.Table("members", **table)
    tick_logs = app.Table("ticks", **table)
    received = app.Table("received", **table)  # rows a replay's batches brought: "count offset"

    async def dead_letter_send(event: faust.EventT, reason: str, payload: bytes | None = None) -> None:
        msg = event.message
        log.warning("dead-letter %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, reason)
        metrics.dead_letters.inc()
        value = json.dumps({
            "reason": reason, "topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
            "payload": (payload if payload is not None else event.value or b"")[:4096].decode("utf-8", "replace"),
        }).encode()
        await dead_letter.send(key=event.key, value=value)

    def member_ids(run: str, partition: int) -> list[str]:
        value = members.get(f"{run}{SEP}{partition}")
        return value.decode().split(SEP) if value else []

    async def send_embeddings(run: str, window_days: int, partition: int, items, done_as_of: date | None = None,
                              wait: bool = False, rows_missing: int = 0) -> None:
        """Send the items (and the tick's completion) to the embeddings topic, in order per partition.

        With `wait`, return only once Kafka has acknowledged them: a caller that records the work
        as done in a table afterwards needs that, because a changelog write can reach Kafka while
        messages to another topic buffered before it are lost (kill -9), and a re-delivered event
        whose state says "done" is not computed again.
        """
        metrics.embeddings_emitted.inc(len(items))
        pending = []
        for batch in chunk_embeddings(run, window_days, partition, items, done_as_of, rows_missing):
            pending.append(await embeddings.send(key=b"", value=encode_embeddings(batch), partition=partition))
        if wait and pending:
            await asyncio.gather(*pending)

    async def on_rows(run: str, window_days: int, rows: Sequence[Row], partition: int, event: faust.EventT) -> None:
        """Update each instrument's window once; a late or corrected row re-emits every processed tick
        it falls in (SPEC section 4)."""
        offset = event.message.offset
        keep = retention_days(window_days, settings.retention_slack_days)
        run_part = f"{run}{SEP}{partition}"
        by_instrument: dict[str, list[Row]] = {}
        for row in rows:
            by_instrument.setdefault(row[0], []).append(row)
        ids = member_ids(run, partition)
        new_ids = by_instrument.keys() - set(ids)
        if new_ids:  # idempotent, so it may come first
            members[run_part] = SEP.join(sorted(set(ids) | new_ids)).encode()
        log_state = tick_logs.get(run_part)
        tick_w, models, tick_days = tick_config(log_state) if log_state else (0, [], [])
        for instrument_id, own in by_instrument.items():
            key = f"{run}{SEP}{instrument_id}"
            state = windows.get(key)
            if Window.parse(state).applied_offset >= offset:
                continue  # re-delivered after a restart or rebalance: already in the restored state
            days = np.array([r[1] for r in own], dtype="datetime64[D]").astype(np.int64)
            new_state = upsert_rows(state, days, np.array([r[2] for r in own]), np.array([r[3] for r in own]),
                                    keep, offset)
            affected = []
            if tick_days and tick_days[-1] >= days.min():  # the row is at or before a processed tick
                affected = sorted({t for d in days.tolist() for t in ticks_affected(tick_days, d, tick_w)})
            if affected:
                window = Window.parse(new_state)
                if not all(window.covers(t, tick_w) for t in affected):
                    reason = (f"correction older than the stream keeps ({keep} days); "
                              "recompute it with `embedder replay --direct`")
                    for r in own:
                        await dead_letter_send(event, reason, row_payload(run, r))
                    continue
                items = embeddings_at([(instrument_id, new_state)], affected, tick_w, models)
                await send_embeddings(run, tick_w, partition, items, wait=True)  # before the state write
            windows[key] = new_state

    def count_received(run: str, partition: int, rows: int, offset: int) -> None:
        """Count a row batch once, however often it is delivered."""
        run_part = f"{run}{SEP}{partition}"
        count, last = received_count(run_part)
        if offset > last:
            received[run_part] = f"{count + rows} {offset}".encode()

    def received_count(run_part: str) -> tuple[int, int]:
        value = received.get(run_part)
        count, last = value.decode().split() if value else (0, -1)
        return int(count), int(last)

    def rows_missing(tick: Tick, partition: int, offset: int) -> int:
        """Rows the replay says it published to this partition before the tick that never arrived.

        A tick re-delivered after a restart can find the count already past it (the state is
        restored up to later row batches); it was checked when first processed, so it is not here.
        """
        if tick.rows_sent is None or partition >= len(tick.rows_sent):
            return 0
        count, last = received_count(f"{tick.run}{SEP}{partition}")
        if last > offset:
            return 0
        missing = tick.rows_sent[partition] - count
        if missing:
            log.error("run %s partition %s: %s of the rows published before tick %s did not arrive",
                      tick.run, partition, missing, tick.as_of)
        return max(missing, 0)

    async def on_tick(tick: Tick, partition: int, event: faust.EventT) -> None:
        """Emit the tick's embeddings for this partition's instruments, the last message marking it done."""
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
        items = embeddings_at(states, [day], tick.window_days, tick.models)
        # A re-delivered tick is computed again, so its record need not wait for Kafka's acks.
        await send_embeddings(tick.run, tick.window_days, partition, items, done_as_of=tick.as_of,
                              rows_missing=rows_missing(tick, partition, event.message.offset))
        keep = retention_days(tick.window_days, settings.retention_slack_days)
        tick_logs[run_part] = record_tick(log_state, day, tick.window_days, tick.models, keep, event.message.offset)

    def on_run_end(run: str, partition: int) -> None:
        """Delete a finished replay's state of this partition (tombstones compact its changelog away)."""
        if run == LIVE_RUN:
            raise BadMessage("the live run never ends")
        run_part = f"{run}{SEP}{partition}"
        for instrument_id in member_ids(run, partition):
            windows.pop(f"{run}{SEP}{instrument_id}", None)
        members.pop(run_part, None)
        tick_logs.pop(run_part, None)
        received.pop(run_part, None)

    known = KnownInstruments(settings.database_url)

    async def unknown_ids(ids: set[str]) -> set[str]:
        """Ids not in `instruments` (the database is asked only about ids not seen before)."""
        if not known.missing(ids):
            return set()
        return await asyncio.to_thread(known.unknown, ids)

    async def on_event(event: faust.EventT) -> None:
        partition = event.message.partition
        try:
            message = decode(event.value)
        except BadMessage:
            metrics.events.labels("bad").inc()
            raise
        metrics.events.labels(message.kind).inc()
        if isinstance(message, PriceRow):
            metrics.rows.inc()
            if await unknown_ids({message.instrument_id}):
                raise BadMessage(f"unknown instrument {message.instrument_id!r}")
            row = (message.instrument_id, message.trade_date, message.close, message.volume)
            await on_rows(message.run, message.window_days or settings.window_days, [row], partition, event)
        elif isinstance(message, RowBatch):
            metrics.rows.inc(len(message.rows))
            unknown = await unknown_ids({r[0] for r in message.rows})
            valid = []
            for row in message.rows:
                problem = row_problem(row[2], row[3]) or (
                    f"unknown instrument {row[0]!r}" if row[0] in unknown else None)
                if problem:
                    await dead_letter_send(event, problem, row_payload(message.run, row))
                else:
                    valid.append(row)
            count_received(message.run, partition, len(message.rows), event.message.offset)
            await on_rows(message.run, message.window_days, valid, partition, event)
        elif isinstance(message, Tick):
            await on_tick(message, partition, event)
        elif isinstance(message, RunEnd):
            on_run_end(message.run, partition)

    guard = OffsetGuard(settings.prices_topic)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        guard.forget()

    @app.agent(prices, name="prices")
    async def process_prices(stream):
        async for event in stream.events():
            partition, offset = event.message.partition, event.message.offset
            metrics.offset_gaps.inc(guard.skipped(partition, offset))
            try:
                await on_event(event)
            except BadMessage as e:
                await dead_letter_send(event, e.reason)
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


def row_payload(run: str, row: Row) -> bytes:
    """One row of a batch as its own dead-letter payload."""
    instrument_id, trade_date, close, volume = row
    return json.dumps({"run": run, "i": instrument_id, "d": trade_date.isoformat(), "c": close, "vol": volume}).encode()
