"""`PricesAdapter`: the I/O around the partition processors, and the commit order, as one class.

What it needs is passed in — state tables, the registry and look-back readers, the sink, the dead-letter
topic, the metrics — so the commit order is called by unit tests with fakes (tests/test_adapter.py: one
test per failure branch) and by the processor harness, exactly as the worker calls it
(`streams/agents.py` wires it to faust: topics, tables, the agent, the commit sensor, revocation).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from shared.contract.messages import (
    LIVE_RUN,
    BadMessage,
    PriceRow,
    RowBatch,
    Tick,
    dead_letter_record,
    decode,
    row_payload,
)
from shared.metrics import StreamMetrics
from streams.output import EmbeddingBatch
from streams.processor import DeadLetter, Effects, PartitionProcessor, ProcessorConfig, ShortWindows, TickReport
from streams.registry import Registry
from streams.state import StateView
from streams.window import Window
from streams.window_store import value_bytes

log = logging.getLogger("embedder.stream")

LostWindows = Callable[[list[str], ShortWindows | None], None]
"""Told (in a thread) which live instruments a tick found without any window, so the bootstrap
loads them again, and which windows held too little history (loaded again where prices_daily holds more)."""


class StateTable(StateView, Protocol):
    """A state table the adapter writes (`streams.state.ByRun` in the worker, dicts wrapped in tests)."""

    def put(self, key: str, value: bytes | None) -> None: ...


class Sink(Protocol):
    """Where embedding batches go (`streams.sink.BatchingSink`)."""

    async def submit(self, batches: list[EmbeddingBatch], done: Callable[[], object]) -> None: ...

    async def write(self, batches: list[EmbeddingBatch]) -> None: ...


def payload(letter: DeadLetter) -> bytes:
    """A dead letter's payload: a message that could not be read goes as it came (bytes); an item the
    processor refused goes as its own JSON record with its run (`row_payload`)."""
    return letter.item if isinstance(letter.item, bytes) else row_payload(letter.run, letter.item)


class DeadLetterTopic(Protocol):
    """Sends a dead letter; the awaitable it returns resolves when Kafka acknowledged it."""

    async def send(self, *, key: Any, value: bytes) -> Awaitable[Any]: ...


class RegistryReads(Registry, Protocol):
    """The registry with its database reads (`streams.registry.DbRegistry`)."""

    def learn(self, ids: set[str]) -> None: ...

    def refresh(self, token: object = None) -> None: ...


class LookbackReader(Protocol):
    def read(self, instrument_ids: list[str], dates: tuple, window_days: int) -> dict[str, Window]: ...


class PricesAdapter:
    """One worker's processors and the commit order of their effects."""

    def __init__(
        self,
        config: ProcessorConfig,
        windows: StateTable,
        runs: StateTable,
        registry: RegistryReads,
        lookback: LookbackReader,
        sink: Sink,
        dead_letter: DeadLetterTopic,
        metrics: StreamMetrics,
        on_lost_windows: LostWindows | None = None,
    ):
        self.config = config
        self.windows = windows
        self.runs = runs
        self.registry = registry
        self.lookback = lookback
        self.sink = sink
        self.dead_letter = dead_letter
        self.metrics = metrics
        self.on_lost_windows = on_lost_windows
        self.processors: dict[int, PartitionProcessor] = {}

    def processor_of(self, partition: int) -> PartitionProcessor:
        proc = self.processors.get(partition)
        if proc is None:
            proc = self.processors[partition] = PartitionProcessor(
                partition, self.config, self.windows, self.runs, self.registry
            )
        return proc

    def revoked(self) -> None:
        """Another worker may change these partitions' state now: parsed caches are stale."""
        self.processors.clear()

    def committed(self, partition: int, offset: int) -> None:
        """Faust committed `offset` of a prices partition: ticks before it never come again."""
        proc = self.processors.get(partition)
        if proc is not None:
            proc.committed(offset)

    async def on_event(self, event: Any) -> None:
        """Process one prices event and apply its effects (the event is acked by `apply_effects`)."""
        partition, offset = event.message.partition, event.message.offset
        proc = self.processor_of(partition)
        m = self.metrics
        try:
            message = decode(event.value)
            m.events.labels(message.kind).inc()
            fx = proc.process(offset, message, await self.prepare(message, partition))
        except BadMessage as e:
            m.events.labels("bad").inc()
            fx = Effects(dead_letters=[DeadLetter(e.reason, "", event.value or b"")])
        m.rows.inc(fx.rows)
        m.corrections_to_database.inc(fx.left_to_database)
        if fx.stale_rows:
            m.stale_rows_skipped.inc(fx.stale_rows)
            log.warning(
                "%s[%s]@%s: %d row(s) not applied: their windows hold rows read after them",
                event.message.topic,
                partition,
                offset,
                fx.stale_rows,
            )
        try:
            await self.apply_effects(event, fx)
        except BaseException:
            proc.forget()  # its caches hold writes that may not have been applied
            raise
        for tick in fx.ticks:
            self.report(partition, tick)
        if (fx.lost_windows or fx.short_windows) and self.on_lost_windows is not None:
            if fx.lost_windows:
                log.warning(
                    "live tick: %d instrument(s) of partition %s have no window (%s); loading them from prices_daily",
                    len(fx.lost_windows),
                    partition,
                    ", ".join(fx.lost_windows[:8]),
                )
            await asyncio.to_thread(self.on_lost_windows, fx.lost_windows, fx.short_windows)

    async def prepare(self, message: Any, partition: int) -> dict[str, Window] | None:
        """The database reads the processor will need, done before it runs (in a thread); returns the
        look-back of a query tick that reads it from the database."""
        registry = self.registry
        if isinstance(message, Tick) and message.lookback_from_db:
            mine = sorted(i for i in set(message.instrument_ids or ()) if registry.partition(i) == partition)
            return await asyncio.to_thread(self.lookback.read, mine, message.dates, message.window_days)
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

    async def send_dead_letters(self, event: Any, letters: list[DeadLetter]) -> list[Awaitable[Any]]:
        msg = event.message
        pending = []
        for letter in letters:
            log.warning("dead-letter %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, letter.reason)
            value = dead_letter_record(letter.reason, msg.topic, msg.partition, msg.offset, payload(letter))
            pending.append(await self.dead_letter.send(key=event.key, value=value))
        self.metrics.dead_letters.inc(len(letters))
        return pending

    async def apply_effects(self, event: Any, fx: Effects) -> None:
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
        pending = await self.send_dead_letters(event, fx.dead_letters)  # 1
        emitted = sum(1 for b in fx.embeddings for item in b.items if item.vector)
        self.metrics.embeddings_emitted.inc(emitted)
        acked_by_sink = bool(fx.embeddings) and not fx.output_before_state
        if fx.output_before_state:  # 2 and 3
            await self.sink.write(fx.embeddings)
            if pending:
                await asyncio.gather(*pending)
        elif acked_by_sink:  # 2
            await self.sink.submit(fx.embeddings, event.ack)
        for key, value in fx.writes.windows.items():  # 4 (a window's chunks before its head)
            self.windows.put(key, value)
        for key, value in fx.writes.runs.items():
            self.runs.put(key, value)
        self.metrics.state_bytes.labels("windows").inc(value_bytes(fx.writes.windows.values()))
        self.metrics.state_bytes.labels("runs").inc(value_bytes(fx.writes.runs.values()))
        if not acked_by_sink:  # 5
            event.ack()

    def report(self, partition: int, tick: TickReport) -> None:
        """Count a tick's instruments and log one line for it (not again when it is re-delivered)."""
        if tick.redelivered:
            return
        m = self.metrics
        short = len(tick.insufficient)
        m.tick_instruments.labels("embedded").inc(tick.embedded)
        m.tick_instruments.labels("insufficient_history").inc(short)
        m.tick_instruments.labels("missing_today").inc(len(tick.missing_today))
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
