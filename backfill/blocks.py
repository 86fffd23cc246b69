"""How a replay cuts its rows into messages: per-partition row batches in blocks of days, ticks after.

Pure planning, no Kafka. Sending one message per row costs the stream an event,
a state write and a changelog record per row; a block sends each partition one
batch per few days instead. A tick T goes out after the block holding T, so it
follows every row with trade_date <= T on every partition (SPEC section 4); the
rows of the block newer than T reach the worker first, which is harmless
because a window is read as of T and the block spans far fewer days than the
retention slack the worker keeps beyond the look-back.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta

from shared.messages import ROW_BATCH_BYTES, row_batch_overhead, row_wire_size
from shared.topics import partition_for


@dataclass(frozen=True)
class RowsOut:
    partition: int
    rows: list[tuple[str, date, float, float]]


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
    """Feed rows in trade_date order; iterate the messages to send, in order."""

    partitions: int
    ticks: list[date]
    block_days: int
    max_bytes: int = ROW_BATCH_BYTES - row_batch_overhead()
    """Encoded bytes of rows per message: batches are cut by size, so any id length fits."""
    _buffers: dict[int, list] = field(default_factory=dict)
    _sizes: dict[int, int] = field(default_factory=dict)
    _block_start: date | None = None
    _next_tick: int = 0
    _partition_of: dict[str, int] = field(default_factory=dict)
    _sent: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ticks = sorted(self.ticks)
        self._sent = [0] * self.partitions

    def add(self, instrument_id: str, trade_date: date, close: float, volume: float) -> Iterator[RowsOut | TickOut]:
        """Messages that must go out before this row (a finished block, a full batch)."""
        if self._block_start is not None and trade_date - self._block_start >= timedelta(days=self.block_days):
            yield from self._end_block(before=trade_date)
        if self._block_start is None:
            self._block_start = trade_date
        p = self._partition_of.get(instrument_id)
        if p is None:
            p = self._partition_of[instrument_id] = partition_for(instrument_id, self.partitions)
        row = (instrument_id, trade_date, close, volume)
        cost = row_wire_size(row)
        if p in self._buffers and self._sizes[p] + cost > self.max_bytes:
            yield self._rows_out(p)
        self._buffers.setdefault(p, []).append(row)
        self._sizes[p] = self._sizes.get(p, 0) + cost

    def finish(self) -> Iterator[RowsOut | TickOut]:
        """The last batches, then every tick not yet sent."""
        yield from self._end_block(before=None)

    def _end_block(self, before: date | None) -> Iterator[RowsOut | TickOut]:
        for p in sorted(self._buffers):
            yield self._rows_out(p)
        self._block_start = None
        first = self._next_tick
        while self._next_tick < len(self.ticks) and (before is None or self.ticks[self._next_tick] < before):
            self._next_tick += 1
        if self._next_tick > first:
            yield TickOut(tuple(self.ticks[first:self._next_tick]), tuple(self._sent))

    def _rows_out(self, p: int) -> RowsOut:
        rows = self._buffers.pop(p)
        self._sizes.pop(p, None)
        self._sent[p] += len(rows)
        return RowsOut(p, rows)


def plan(rows: Iterable[tuple[str, date, float, float]], partitions: int, ticks: list[date],
         block_days: int) -> Iterator[RowsOut | TickOut]:
    """All messages of a replay for rows in trade_date order."""
    planner = BlockPlanner(partitions, ticks, block_days)
    for row in rows:
        yield from planner.add(*row)
    yield from planner.finish()
