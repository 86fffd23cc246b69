"""One partition's stream semantics as plain Python: no broker, no Faust (bytewax's window logic is the model).

`PartitionProcessor.process(offset, message)` reads the partition's state through
`PartitionState` (over two mappings, `windows` and `runs`: Faust tables in the
worker, dicts in tests; the window encoding and the caches live there) and
returns `Effects`: dead letters, embedding batches, state writes and tick
reports. It never writes the mappings itself; the adapter (`streams/adapter.py`)
applies the effects in one commit order, so what the processor decides and when
it becomes durable are separate, testable things.

The semantics (SPEC section 4):
- rows (and deletions) update each instrument's window once per event; a row or
  deletion at or before a processed tick re-emits every embedding of that tick it
  reaches (a delete that leaves too little history removes the embedding);
- a tick emits, for every instrument it covers and every date it carries, the
  SPEC section 3 embedding, and says what it could not compute (insufficient
  history, no row that day) in its completion;
- every value records the source offset it applied, so an event re-delivered
  after a restart or rebalance (state restored ahead of the committed offsets)
  changes nothing;
- a bad row costs only itself: it becomes one dead letter, the rest apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from shared.contract.encoder import LOOKBACK_FACTOR
from shared.contract.messages import (
    LIVE_RUN,
    BadMessage,
    Message,
    PriceRow,
    RowBatch,
    RunEnd,
    Tick,
    is_deletion,
)
from shared.store.embedding_store import price_changes
from streams.output import Embedding, EmbeddingBatch, TickDone
from streams.partition_state import DEFAULT_CACHE_WINDOWS, PartitionState
from streams.registry import Registry
from streams.state import RunPartition, StateView, TickRecord, Writes, window_key
from streams.ticks import Computed, Timeline, computed_at, embeddings_at
from streams.window import NO_OFFSET, NO_ROWS, NO_STAMP, Window, date_of, day_number, retention_days


@dataclass(frozen=True)
class ProcessorConfig:
    partitions: int
    live_window_days: int
    """The live service's window: live rows carry no window of their own."""
    retention_slack_days: int


@dataclass(frozen=True)
class DeadLetter:
    """Why one item goes to the dead-letter topic, and the item as the stream saw it (a row, a rejected raw
    row, or a tick's date and scope) with its run. The adapter encodes it (`payload`); the processor never
    builds bytes."""

    reason: str
    run: str
    item: object


@dataclass(frozen=True)
class TickReport:
    """What one tick computed on this partition (for metrics and one log line per tick)."""

    run: str
    scope: str
    dates: tuple[date, ...]
    expected: int
    embedded: int
    insufficient: list[str]
    missing_today: list[str]
    """Of the newest date: instruments without an embedding, and without a row that day."""
    redelivered: bool


@dataclass(frozen=True)
class ShortWindows:
    """Live windows a tick found holding too little history to embed it: rows each holds of [since, until]
    (the tick's look-back). Where prices_daily holds more there, the window lost rows it had (a restore that
    missed some): it is loaded again, as a lost window is; a new listing's window holds what the table does."""

    since: date
    until: date
    held: dict[str, int]


@dataclass
class Effects:
    dead_letters: list[DeadLetter] = field(default_factory=list)
    embeddings: list[EmbeddingBatch] = field(default_factory=list)
    writes: Writes = field(default_factory=Writes)
    ticks: list[TickReport] = field(default_factory=list)
    lost_windows: list[str] = field(default_factory=list)
    """Live instruments a tick covers that have no window at all: the bootstrap should load them."""
    short_windows: ShortWindows | None = None
    """Live instruments a tick covers whose windows hold too little history: checked against prices_daily."""
    rows: int = 0
    stale_rows: int = 0
    """Rows not applied: their window holds rows read after them (a relay that lost its turn published
    what it had read before; `shared.store.write_claims`)."""
    left_to_database: int = 0
    """Live corrections older than the windows hold (or reaching ticks whose look-back they no longer
    hold): the database path (`live.corrections`) recomputes what they reach from prices_daily. The
    relay queued them there before publishing them (the keys they reach were stored long before: no
    tick reaching beyond a window's horizon is ever computed from it)."""

    @property
    def output_before_state(self) -> bool:
        """True when the output must be durable (committed by the sink, acknowledged by Kafka) before
        the state is written: the event writes windows (recording its offset as applied, so a
        re-delivery skips it) and emits something only that first delivery produces (corrections,
        their dead letters). A tick writes no window: if it comes again it is computed whole, so its
        output need not be waited for."""
        return bool(self.writes.windows) and bool(self.embeddings or self.dead_letters)


class PartitionProcessor:
    """The state machine of one prices partition. Not thread-safe; one event at a time."""

    def __init__(
        self,
        partition: int,
        config: ProcessorConfig,
        windows: StateView,
        runs: StateView,
        registry: Registry,
        cache_windows: int = DEFAULT_CACHE_WINDOWS,
    ):
        self.partition = partition
        self.config = config
        self.state = PartitionState(partition, windows, runs, cache_windows)
        self.registry = registry
        self._unconfirmed: dict[str, dict[int, int]] = {}
        """Per run: offset -> first look-back day of each tick whose offset is not committed yet."""

    def forget(self) -> None:
        """Drop the parsed-state caches (after a rebalance, or when effects were not applied)."""
        self.state.forget()
        self._unconfirmed.clear()

    def committed(self, offset: int) -> None:
        """Faust committed this partition's offset: events before `offset` will never come again, so
        windows may drop the rows only their ticks needed."""
        for pending in self._unconfirmed.values():
            for o in [o for o in pending if o < offset]:
                del pending[o]

    def _floor(self, run: str) -> int | None:
        """The first day a tick whose offset is not committed yet needs: no window drops rows from it
        on. Such a tick comes again after a crash (whether or not the sink had written its output), and
        the state written since — restored from the changelog — must still be able to compute it."""
        pending = self._unconfirmed.get(run)
        return min(pending.values()) if pending else None

    def process(self, offset: int, message: Message, lookback: Mapping[str, Window] | None = None) -> Effects:
        """What `message`, read at `offset` of this partition, does. Raises BadMessage only for a
        message that is wrong as a whole (its reason is dead-lettered by the caller).

        `lookback`: for a query tick reading its look-back from the database (`Tick.lookback_from_db`),
        its instruments' windows as read (`streams/lookback.py`); the tick is computed from them."""
        fx = Effects()
        if isinstance(message, RowBatch):
            fx.rows = message.rows_total
            self._rows(
                message.run,
                message.window_days,
                message.rows,
                message.rejected,
                message.rows_total,
                offset,
                fx,
                message.slack_days,
                message.stamp,
            )
        elif isinstance(message, PriceRow):
            fx.rows = 1
            row = (message.instrument_id, message.trade_date, message.close, message.volume)
            self._rows(message.run, message.window_days or self.config.live_window_days, [row], [], 1, offset, fx)
        elif isinstance(message, Tick):
            if message.lookback_from_db and lookback is None:
                raise BadMessage("a query tick reading its look-back from the database came without it")
            self._tick(message, offset, fx, lookback if message.lookback_from_db else None)
        elif isinstance(message, RunEnd):
            self._end(message.run, fx)
        self.state.flush(fx.writes, offset)
        return fx

    # --- rows ------------------------------------------------------------------------------------

    def _rows(
        self,
        run: str,
        window_days: int,
        rows: Sequence[tuple],
        rejected: Sequence[tuple[str, object]],
        rows_total: int,
        offset: int,
        fx: Effects,
        slack_days: int | None = None,
        stamp: int | None = None,
    ) -> None:
        """Apply a batch's rows to their instruments' windows and re-emit what they correct."""
        keep = retention_days(window_days, self.config.retention_slack_days if slack_days is None else slack_days)
        before = self.state.run(run)
        by_instrument = self._known_rows(run, rows, rejected, fx)
        state = before.with_received(rows_total, offset).with_members(set(by_instrument))
        corrections: dict[int, list[Embedding]] = {}
        changed_prices: list[tuple[str, date]] = []
        floor = self._floor(run)
        for instrument_id, own in by_instrument.items():
            changed = self._apply(run, instrument_id, own, keep, offset, floor, stamp, state, corrections, fx)
            changed_prices.extend((instrument_id, date_of(d)) for d in changed)
        cause = price_changes(changed_prices)
        for window_days, items in corrections.items():
            fx.embeddings.append(
                EmbeddingBatch(run, window_days, self.partition, items, cause=cause, computed_from=stamp)
            )
        self.state.write_run(fx.writes, run, before, state)

    def _known_rows(
        self, run: str, rows: Sequence[tuple], rejected: Sequence[tuple[str, object]], fx: Effects
    ) -> dict[str, list[tuple]]:
        """The rows of known instruments, by instrument; each rejected or unknown row is one dead letter."""
        for reason, raw in rejected:
            fx.dead_letters.append(DeadLetter(reason, run, raw))
        unknown = self.registry.unknown({r[0] for r in rows})
        by_instrument: dict[str, list[tuple]] = {}
        for row in rows:
            if row[0] in unknown:
                fx.dead_letters.append(DeadLetter(f"unknown instrument {row[0]!r}", run, row))
            else:
                by_instrument.setdefault(row[0], []).append(row)
        return by_instrument

    def _apply(
        self,
        run: str,
        instrument_id: str,
        own: list[tuple],
        keep: int,
        offset: int,
        floor: int | None,
        stamp: int | None,
        state: RunPartition,
        corrections: dict[int, list[Embedding]],
        fx: Effects,
    ) -> list[int]:
        """Apply one instrument's rows to its window; add what they correct to `corrections` (by window
        length). Returns the days applied when they corrected something (their price changes), else []."""
        key = window_key(run, instrument_id)
        stored = self.state.window(key)
        if stored.applied_offset >= offset:
            return []  # re-delivered after a restart or rebalance: already in the restored state
        if stored.newer_than(stamp):
            fx.stale_rows += len(own)  # read before rows the window holds (a relay that lost its turn)
            return []
        changes = [(day_number(r[1]), None, None) if is_deletion(r) else (day_number(r[1]), r[2], r[3]) for r in own]
        window, too_old = stored.apply(changes, keep, offset, floor, stamp)
        live = run == LIVE_RUN
        for k in too_old:
            if live:  # history: the database path recomputes what it reaches
                fx.left_to_database += 1
            else:
                fx.dead_letters.append(
                    DeadLetter(
                        f"row older than the stream keeps ({keep} days before the instrument's newest row); "
                        "recompute the embeddings it reaches with `embedder replay --direct`",
                        run,
                        own[k],
                    )
                )
        days = [c[0] for c in changes]
        applied = list(enumerate(days))
        if too_old:
            skipped = set(too_old)
            applied = [(k, d) for k, d in applied if k not in skipped]
        applied_days = [d for _, d in applied]
        reached = self._ticks_reached(run, instrument_id, state, applied_days)
        fresh = self._corrected(run, instrument_id, window, own, applied, reached, corrections, fx) if reached else []
        self.state.write_window(fx.writes, key, stored, window, days)
        return applied_days if fresh else []

    def _corrected(
        self,
        run: str,
        instrument_id: str,
        window: Window,
        own: list[tuple],
        applied: list[tuple[int, int]],
        reached: list[TickRecord],
        corrections: dict[int, list[Embedding]],
        fx: Effects,
    ) -> list[TickRecord]:
        """Rows reaching processed ticks: what the window still holds the look-back of is recomputed (into
        `corrections`); a tick it no longer holds goes to the database path (live) or a dead letter. Returns
        the ticks recomputed."""
        live = run == LIVE_RUN
        stale = [t for t in reached if not window.covers(t.day, t.window_days)]
        for k, d in applied:
            lost = [t for t in stale if t.reaches(d)]
            if lost and live:
                fx.left_to_database += 1
            elif lost:
                fx.dead_letters.append(
                    DeadLetter(
                        f"correction reaches tick {date_of(lost[0].day)} whose look-back the stream no longer "
                        "holds; recompute it with `embedder replay --direct`",
                        run,
                        own[k],
                    )
                )
        fresh = [t for t in reached if t not in stale]
        for window_days in {t.window_days for t in fresh}:
            corrections.setdefault(window_days, []).extend(
                recompute(instrument_id, window, [t for t in fresh if t.window_days == window_days])
            )
        return fresh

    def _ticks_reached(self, run: str, instrument_id: str, state: RunPartition, days: list[int]) -> list[TickRecord]:
        """Processed ticks whose look-back holds one of `days` and that emit for this instrument."""
        if not days or not state.ticks or min(days) > state.ticks[-1].day:
            return []  # the usual case: rows newer than every processed tick
        reached = [t for t in state.ticks if any(t.reaches(d) for d in days)]
        if run == LIVE_RUN:
            reached = [t for t in reached if self.registry.covers(instrument_id, t.scope or "*")]
        return reached

    # --- ticks -----------------------------------------------------------------------------------

    def _expected(self, tick: Tick, state: RunPartition) -> list[str]:
        """The instruments a tick emits for on this partition."""
        if tick.run != LIVE_RUN:
            return sorted(state.members)
        if tick.query_run is None:
            return self.registry.in_scope(tick.scope, self.partition)
        if tick.instrument_ids is not None:
            return sorted(i for i in set(tick.instrument_ids) if self.registry.partition(i) == self.partition)
        return self.registry.selection(tick.scope, tick.limit, tick.offset, self.partition)

    def _tick(self, tick: Tick, offset: int, fx: Effects, lookback: Mapping[str, Window] | None = None) -> None:
        """Emit the tick's embeddings on this partition, say what it could not compute, record it."""
        before = self.state.run(tick.run)
        query = tick.query_run is not None
        redelivered = offset <= before.tick_offset and not query
        live = tick.run == LIVE_RUN and not query
        days = [day_number(d) for d in tick.dates]
        expected = self._expected(tick, before)
        full, partial, no_window = self._held_windows(tick, days, expected, lookback)
        timeline = Timeline(full)
        computed, every_full_computed, uncovered = self._embeddings(tick, days, timeline, partial)
        items = computed.items
        if uncovered and not redelivered:
            fx.dead_letters.append(self._lost_lookback(tick, uncovered))
        present = (Timeline(full + partial) if partial else timeline).present(days)  # (held windows x days)
        got = computed.ids_on(days[-1])  # of the newest date
        absent = self._absent(tick, days, computed, got, every_full_computed, full, partial, no_window)
        fx.embeddings.append(
            EmbeddingBatch(
                tick.query_run or tick.run,
                tick.window_days,
                self.partition,
                items + absent,
                self._done(tick, days, expected, computed, no_window, present),
                self._rows_missing(tick, before, offset),
                tick.scope if live else "",
                redelivered,
                tuple((i, tick.dates[0]) for i in no_window) if tick.run == LIVE_RUN else (),
                computed_from=tick_claim(tick, lookback),
            )
        )
        if lookback is None:  # a look-back read from the database is read again if the tick comes again
            self._unconfirmed.setdefault(tick.run, {})[offset] = days[0] - LOOKBACK_FACTOR * tick.window_days
        if not query:  # a query reads the live state; it is no tick of the live run
            keep = retention_days(tick.window_days, self.config.retention_slack_days)
            records = [TickRecord(d, tick.window_days, tuple(tick.models), tick.scope if live else None) for d in days]
            self.state.write_run(fx.writes, tick.run, before, before.with_ticks(records, keep, offset))
        fx.ticks.append(self._report(tick, live, redelivered, expected, got, full + partial, present))
        if live and no_window and not redelivered:
            fx.lost_windows.extend(no_window)
        if live and not redelivered:
            fx.short_windows = self._short(tick, days, got, full)

    def _held_windows(
        self, tick: Tick, days: list[int], expected: list[str], lookback: Mapping[str, Window] | None
    ) -> tuple[list[tuple[str, Window]], list[tuple[str, Window]], list[str]]:
        """The expected instruments' windows: (covering the tick's look-back, covering part of it, none at all)."""
        full: list[tuple[str, Window]] = []
        partial: list[tuple[str, Window]] = []
        no_window: list[str] = []
        for instrument_id in expected:
            if lookback is None:
                window = self.state.window(window_key(tick.run, instrument_id))
            else:
                window = lookback.get(instrument_id, NO_ROWS)
            if window.applied_offset == NO_OFFSET and not window.rows.size:
                no_window.append(instrument_id)
            elif window.covers(days[0], tick.window_days):
                full.append((instrument_id, window))
            else:
                partial.append((instrument_id, window))
        return full, partial, no_window

    @staticmethod
    def _embeddings(
        tick: Tick, days: list[int], full: Timeline, partial: list[tuple[str, Window]]
    ) -> tuple[Computed, bool, list[str]]:
        """The embeddings the held windows give (`full`: those covering the look-back, on one timeline): (them,
        whether every full window gave every one, the partial windows that miss a day's look-back)."""
        parts = [full.compute(days, tick.window_days, tick.models)]
        every_full_computed = len(parts[0].items) == len(full.ids) * len(days) * len(tick.models)
        uncovered: list[str] = []
        for instrument_id, window in partial:
            covered = [d for d in days if window.covers(d, tick.window_days)]
            parts.append(computed_at([(instrument_id, window)], covered, tick.window_days, tick.models))
            if len(covered) < len(days):
                uncovered.append(instrument_id)
        return Computed.joined(parts), every_full_computed, uncovered

    @staticmethod
    def _short(tick: Tick, days: list[int], got: set[str], held: list[tuple[str, Window]]) -> ShortWindows | None:
        """The windows covering the tick's look-back (`held`: none dropped rows of it) that gave no embedding of its
        newest date, with the rows each holds of the look-back (usually none: an instrument listed too recently).
        A window that dropped rows of the look-back is a tick older than its rows, reported as such. `got`: the
        instruments embedded on the newest date."""
        short = [(i, w) for i, w in held if i not in got]
        if not short:
            return None
        since, until = days[0] - LOOKBACK_FACTOR * tick.window_days, days[-1]
        return ShortWindows(
            date_of(since),
            date_of(until),
            {i: int(np.count_nonzero((w.days >= since) & (w.days <= until))) for i, w in short},
        )

    @staticmethod
    def _lost_lookback(tick: Tick, uncovered: list[str]) -> DeadLetter:
        """Rows far newer than the tick arrived before it: the look-back is gone. Kept visible."""
        return DeadLetter(
            f"tick {tick.dates[0]}: windows of {len(uncovered)} instrument(s) ({', '.join(uncovered[:5])}) no "
            "longer hold the look-back; recompute them with `embedder replay --direct`",
            tick.run,
            [tick.as_of.isoformat(), tick.scope],
        )

    @staticmethod
    def _absent(
        tick: Tick,
        days: list[int],
        computed: Computed,
        got_newest: set[str],
        every_full_computed: bool,
        full: list[tuple[str, Window]],
        partial: list[tuple[str, Window]],
        no_window: list[str],
    ) -> list[Embedding]:
        """Keys the tick asked for and could not compute (too little history): empty vectors, so a key
        stored before is removed and the key is recorded absent. `got_newest`: the instruments embedded on the
        tick's newest day."""
        if len(days) == 1:  # a live tick: who was embedded on its day tells (a 20,000-instrument tick asks 20,000)
            when = tick.dates[0]
            asked_ids = ([] if every_full_computed else [i for i, _ in full]) + no_window  # a partial window
            # covers no day of a one-day tick (it is partial by not covering the tick's first)
            return [Embedding(i, when, m, b"") for i in asked_ids if i not in got_newest for m in tick.models]
        asked = [] if every_full_computed else [(i, d) for i, _ in full for d in days]  # the usual case: none
        asked += [(i, d) for i, w in partial for d in days if w.covers(d, tick.window_days)]
        asked += [(i, d) for i in no_window for d in days]
        if not asked:
            return []
        pairs = computed.pairs()
        return [Embedding(i, date_of(d), m, b"") for i, d in asked if (i, d) not in pairs for m in tick.models]

    @staticmethod
    def _done(
        tick: Tick,
        days: list[int],
        expected: list[str],
        computed: Computed,
        no_window: list[str],
        present: np.ndarray,
    ) -> tuple[TickDone, ...]:
        """Per date: embedded, not embedded, and without a row that day."""
        embedded = computed.per_day()
        missing = len(no_window) + (~present).sum(axis=0)
        return tuple(
            TickDone(as_of, embedded.get(d, 0), len(expected) - embedded.get(d, 0), int(m))
            for as_of, d, m in zip(tick.dates, days, missing)
        )

    @staticmethod
    def _report(
        tick: Tick,
        live: bool,
        redelivered: bool,
        expected: list[str],
        got: set[str],
        held: list[tuple[str, Window]],
        present: np.ndarray,
    ) -> TickReport:
        """What the tick computed, for metrics and its log line (of the newest date: `got` embedded on it)."""
        held_newest = {i for (i, _), here in zip(held, present[:, -1]) if here}
        return TickReport(
            tick.query_run or tick.run,
            tick.scope if live else "",
            tick.dates,
            len(expected),
            len(got),
            [i for i in expected if i not in got],
            [i for i in expected if i not in held_newest],
            redelivered,
        )

    def _rows_missing(self, tick: Tick, state: RunPartition, offset: int) -> int:
        """Rows the replay says it published to this partition before the tick that never arrived.

        A tick re-delivered after a restart can find the count already past it (the state is
        restored up to later row batches); it was checked when first processed, so it is not here.
        """
        if tick.rows_sent is None or self.partition >= len(tick.rows_sent) or state.received_offset > offset:
            return 0
        return max(tick.rows_sent[self.partition] - state.received, 0)

    # --- run end ---------------------------------------------------------------------------------

    def _end(self, run: str, fx: Effects) -> None:
        """Delete a finished replay's state of this partition (tombstones compact its changelog away)."""
        if run == LIVE_RUN:
            raise BadMessage("the live run never ends")
        before = self.state.run(run)
        for instrument_id in sorted(before.members):
            key = window_key(run, instrument_id)
            self.state.write_window(fx.writes, key, self.state.window(key), None)
        self.state.write_run(fx.writes, run, before, None)
        self._unconfirmed.pop(run, None)


def tick_claim(tick: Tick, lookback: Mapping[str, Window] | None) -> int | None:
    """What a tick's embeddings claim (`shared.store.write_claims`): its own stamp (every window of the partition
    applied every message before it), or where its look-back was read from prices_daily, the claim of that
    read (the lowest of its windows')."""
    if lookback is not None:
        read = [w.stamp for w in lookback.values() if w.stamp != NO_STAMP]
        if read:
            return min(read)
    return tick.stamp


def recompute(instrument_id: str, window: Window, ticks: Sequence[TickRecord]) -> list[Embedding]:
    """The embeddings `ticks` give for one window now: a vector where history suffices, else a
    deletion (empty bytes), so a correction that leaves too little history removes the stored row."""
    groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
    for tick in ticks:
        groups.setdefault((tick.window_days, tick.models), []).append(tick.day)
    out: list[Embedding] = []
    for (window_days, models), days in groups.items():
        items = embeddings_at([(instrument_id, window)], days, window_days, models)
        present = {(as_of, m) for _, as_of, m, _ in items}
        out.extend(items)
        out.extend(
            Embedding(instrument_id, as_of, m, b"")
            for as_of in map(date_of, days)
            for m in models
            if (as_of, m) not in present
        )
    return out
