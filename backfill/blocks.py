"""How a replay cuts its rows into messages: per-partition row batches in blocks of days, ticks after.

Pure planning, no Kafka. Sending one message per row costs the stream an event,
a state write and a changelog record per row; a block sends each partition one
batch per few days instead. A tick T goes out after the block holding T, so it
follows every row with trade_date <= T on every partition (SPEC section 4); the
rows of the block newer than T reach the worker first, which is harmless because a window is
read as of T and keeps, beyond the look-back, as many days as a block spans
(each row batch tells the worker: `RowBatch.slack_days`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta

from shared.broker.topics import partition_for
from shared.contract.messages import ROW_BATCH_BYTES, Deletion, Row, row_batch_overhead, row_wire, rows_wire


@dataclass(frozen=True)
class RowsOut:
    partition: int
    rows: list[Row | Deletion]
    wire: list[bytes]  # the rows encoded (shared.contract.messages.rows_wire), once: joined by commas in a batch


@dataclass(frozen=True)
class TickOut:
    """One tick for every as_of date a block completes (a replay sends one per block, not per date)."""

    dates: tuple[date, ...]  # ascending
    rows_sent: tuple[int, ...]  # rows sent so far to each partition, by partition number

    @property
    def as_of(self) -> date:
        return self.dates[-1]


@dataclass
class BlockPlanner:
    """Feed rows in trade_date order; iterate the messages to send, in order.

    A block's rows are held per partition until the block ends, then cut into batches at
    instrument boundaries (every batch under the message limit), so each instrument's window is
    updated once per block: the worker writes a window (and its changelog record) once per event
    that touches it.
    """

    partitions: int
    ticks: list[date]
    block_days: int
    max_bytes: int = ROW_BATCH_BYTES - row_batch_overhead()
    """Encoded bytes of rows per message: batches are cut by size, so any id length fits."""
    max_block_rows: int = 1_000_000
    """A block held in memory ends early past this many rows (ending a block early is always right)."""
    _held: dict[str, list] = field(default_factory=dict)
    """The block's rows so far, by instrument (in the order the instruments came)."""
    _rows: int = 0
    _block_start: date | None = None
    _next_tick: int = 0
    _partition_of: dict[str, int] = field(default_factory=dict)
    _sent: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.block_days < 1:  # `feed` tests a block's end once per day
            raise ValueError(f"a replay block spans at least one day, not {self.block_days}")
        self.ticks = sorted(self.ticks)
        self._sent = [0] * self.partitions

    def feed(self, rows: Iterable[tuple[str, date, float, float]]) -> Iterator[RowsOut | TickOut]:
        """`add` for every row, in trade_date order: a row of the day before it is only held (a block ends only
        where the day changes or it is full), so the day's rows skip the end-of-block test (a replay's command
        spent a third of its CPU on a generator per row), and a row is held by its instrument alone (its
        partition is looked up once per instrument and block, when the block ends)."""
        day: date | None = None
        held = self._held
        for row in rows:
            trade_date = row[1]
            if trade_date != day or self._rows >= self.max_block_rows:
                yield from self._end_block_before(trade_date)
                day = trade_date
            of_instrument = held.get(row[0])
            if of_instrument is None:
                of_instrument = held[row[0]] = []
            of_instrument.append(tuple(row))
            self._rows += 1

    def add(self, instrument_id: str, trade_date: date, close: float, volume: float) -> Iterator[RowsOut | TickOut]:
        """Messages that must go out before this row (those of a finished block).

        A block ends where its rows would reach `block_days` past its first tick date: a window
        keeps that many days beyond the look-back, so no tick of the block loses a row it needs.
        Rows before the first tick (a replay's look-back) all go in the first block.
        """
        yield from self._end_block_before(trade_date)
        self._hold(instrument_id, (instrument_id, trade_date, close, volume))

    def _end_block_before(self, trade_date: date) -> Iterator[RowsOut | TickOut]:
        """The block's messages if a row of `trade_date` must start the next one."""
        if self._block_start is not None and (
            self._rows >= self.max_block_rows
            or (
                self._next_tick < len(self.ticks)
                and trade_date - max(self._block_start, self.ticks[self._next_tick]) >= timedelta(days=self.block_days)
            )
        ):
            yield from self._end_block(before=trade_date)
        if self._block_start is None:
            self._block_start = trade_date

    def _hold(self, instrument_id: str, row: tuple) -> None:
        """Keep a row with its instrument's until the block ends."""
        self._held.setdefault(instrument_id, []).append(row)
        self._rows += 1

    def _by_partition(self) -> dict[int, list[list]]:
        """The block's rows held, each instrument's list in its partition's, instruments in the order they came."""
        out: dict[int, list[list]] = {}
        partition_of = self._partition_of
        for instrument_id, rows in self._held.items():
            p = partition_of.get(instrument_id)
            if p is None:
                p = partition_of[instrument_id] = partition_for(instrument_id, self.partitions)
            out.setdefault(p, []).append(rows)
        self._held.clear()  # in place: `feed` holds on to it
        return out

    def finish(self) -> Iterator[RowsOut | TickOut]:
        """The last batches, then every tick not yet sent."""
        yield from self._end_block(before=None)

    def _end_block(self, before: date | None) -> Iterator[RowsOut | TickOut]:
        by_partition = self._by_partition()
        for p in sorted(by_partition):
            yield from self._rows_out(p, by_partition[p])
        self._block_start = None
        self._rows = 0
        first = self._next_tick
        while self._next_tick < len(self.ticks) and (before is None or self.ticks[self._next_tick] < before):
            self._next_tick += 1
        if self._next_tick > first:
            yield TickOut(tuple(self.ticks[first : self._next_tick]), tuple(self._sent))

    def _rows_out(self, p: int, instruments: list[list]) -> Iterator[RowsOut]:
        """A partition's block as batches, whole instruments each (an instrument's rows are split
        only if they alone exceed a message)."""
        batch: list = []
        wire: list[bytes] = []
        size = 0
        for rows in instruments:
            joined = rows_wire(rows)  # the instrument's rows, comma-separated: one `wire` entry
            if batch and size + len(joined) + 1 > self.max_bytes:
                yield self._out(p, batch, wire)
                batch, wire, size = [], [], 0
            if size + len(joined) + 1 <= self.max_bytes:
                batch.extend(rows)
                wire.append(joined)
                size += len(joined) + 1
                continue
            for row in rows:  # more than a message alone: cut between its rows
                row_bytes = row_wire(row)
                if batch and size + len(row_bytes) + 1 > self.max_bytes:
                    yield self._out(p, batch, wire)
                    batch, wire, size = [], [], 0
                batch.append(row)
                wire.append(row_bytes)
                size += len(row_bytes) + 1
        if batch:
            yield self._out(p, batch, wire)

    def _out(self, p: int, rows: list, wire: list[bytes]) -> RowsOut:
        self._sent[p] += len(rows)
        return RowsOut(p, rows, wire)


def plan(
    rows: Iterable[tuple[str, date, float, float]], partitions: int, ticks: list[date], block_days: int
) -> Iterator[RowsOut | TickOut]:
    """All messages of a replay for rows in trade_date order."""
    planner = BlockPlanner(partitions, ticks, block_days)
    yield from planner.feed(rows)
    yield from planner.finish()
