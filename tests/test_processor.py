"""The partition processor with plain dict tables and no broker: SPEC section 4 as plain Python.

Each test feeds messages at offsets, applies the returned writes to the dicts the way the
adapter does, and checks the emitted embeddings against tests/support/reference.py (an independent
plain-loop SPEC section 3).
"""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from shared.contract.encoder import LOOKBACK_FACTOR
from shared.contract.messages import LIVE_RUN, BadMessage, RowBatch, RunEnd, Tick
from shared.contract.validation import NON_POSITIVE_CLOSE
from shared.metrics import StreamMetrics
from shared.store.price_history import History
from streams import window_store
from streams.adapter import PricesAdapter, payload
from streams.lookback import window_of
from streams.processor import Effects, ProcessorConfig
from streams.registry import InstrumentInfo, StaticRegistry
from streams.state import SEP, RunPartition, run_key, window_key
from streams.window import day_number
from tests.support.fakes import DeadLetters, Event, Sink, Table
from tests.support.helpers import expected_from_rows

PARTITIONS = 1
W = 10
MODELS = ("numeric-simple-v1", "num-regime-core-v1")
DAY0 = date(2020, 1, 1)


class Harness:
    """A processor over dict tables, its effects applied by the worker's own commit order
    (`PricesAdapter.apply_effects`) into fake tables, a fake sink and a fake dead-letter topic."""

    def __init__(self, registry: StaticRegistry | None = None, windows: Table | None = None, runs: Table | None = None):
        self.log: list[str] = []
        self.windows = windows if windows is not None else Table(self.log)
        self.runs = runs if runs is not None else Table(self.log)
        self.registry = registry or StaticRegistry({}, PARTITIONS)
        self.sink = Sink(self.log)
        self.adapter = PricesAdapter(
            ProcessorConfig(PARTITIONS, W, 15),
            self.windows,
            self.runs,
            self.registry,
            None,
            self.sink,
            DeadLetters(self.log),
            StreamMetrics.create(CollectorRegistry()),
        )
        self.proc = self.adapter.processor_of(0)
        self.stored: dict[tuple, bytes] = {}  # what the sink committed: upserts and deletions in order
        self.done: list = []
        self.unacked: set[int] = set()
        self.next_offset = 0

    def feed(self, offset: int, message, committed: bool = True, commit_offsets: bool = True) -> Effects:
        """Process, apply the effects in the commit order with a sink that commits the output (unless
        `committed` is False: a crash before the sink's commit, so the event is never acked), and
        commit offsets as faust does: up to the first unacked event."""
        fx = self.proc.process(offset, message)
        self.next_offset = max(self.next_offset, offset + 1)
        event = Event(0, offset, message, self.log)
        self.sink.hold = not committed
        before = len(self.sink.committed)

        async def apply() -> None:
            await self.adapter.apply_effects(event, fx)
            await asyncio.sleep(0)  # the sink's acks

        asyncio.run(apply())
        for batch in self.sink.committed[before:]:
            for i, d, m, v in batch.items:
                if v:
                    self.stored[(i, d, m)] = v
                else:
                    self.stored.pop((i, d, m), None)
            self.done.extend(batch.done)
        if not event.acked:
            self.unacked.add(offset)
            self.proc.committed(min(self.unacked))
        elif commit_offsets:  # faust commits on a timer: False models a crash before it came round
            self.proc.committed(min(self.unacked) if self.unacked else self.next_offset)
        return fx


def market(ids: list[str], market_id: str = "M1", selectable: bool = True) -> dict[str, InstrumentInfo]:
    return {i: InstrumentInfo(market_id, selectable) for i in ids}


def history(ids: list[str], days: int, start: date = DAY0) -> list[tuple]:
    """Rows on weekdays, in trade_date order; instrument k skips every (k+3)-th day."""
    rows = []
    for n in range(days):
        d = start + timedelta(days=n)
        if d.weekday() < 5:
            rows.extend(
                (i, d, 10.0 + k + n * 0.1 + (n % 7) * 0.3, float(1000 * (k + 1) + n))
                for k, i in enumerate(ids)
                if n % (k + 3)
            )
    return rows


def expected(rows: list[tuple], ids: list[str], as_of: list[date], models=MODELS) -> dict[tuple, bytes]:
    return expected_from_rows(rows, ids, as_of, W, models)


def replay(h: Harness, run: str, rows: list[tuple], ticks: list[date], first_offset: int = 0) -> int:
    """Rows in batches, each tick after every row up to it; returns the next offset."""
    offset = first_offset
    pending = list(rows)
    for t in ticks:
        now = [r for r in pending if r[1] <= t]
        pending = [r for r in pending if r[1] > t]
        if now:
            h.feed(offset, RowBatch(run, W, now))
            offset += 1
        h.feed(offset, Tick(run=run, d=t, w=W, m=MODELS))
        offset += 1
    return offset


IDS = ["A", "B", "C"]


def test_a_replay_emits_exactly_the_reference_embeddings_and_says_what_it_could_not():
    rows = history(IDS, 60)[:-2]
    rows += [("THIN", DAY0 + timedelta(days=55), 5.0, 1.0)]  # one row only: never enough history
    h = Harness(StaticRegistry(market(IDS + ["THIN"]), PARTITIONS))
    ticks = sorted({r[1] for r in rows if r[1] >= DAY0 + timedelta(days=30)})
    replay(h, "replay-1", sorted(rows, key=lambda r: r[1]), ticks)
    assert h.stored == expected(rows, IDS + ["THIN"], ticks)
    assert [t.as_of for t in h.done] == ticks
    last = h.done[-1]
    assert last.embedded == 3 and last.insufficient == 1  # THIN
    assert last.missing_today == sum(1 for i in IDS + ["THIN"] if (i, ticks[-1]) not in {(r[0], r[1]) for r in rows})


def test_one_tick_with_many_dates_equals_a_tick_per_date():
    rows = history(IDS, 70)  # the windows keep 3 * 10 + 15 days before the newest row: from day 24
    dates = sorted({r[1] for r in rows if r[1] >= DAY0 + timedelta(days=55)})
    one = Harness(StaticRegistry(market(IDS), PARTITIONS))
    one.feed(0, RowBatch("r", W, rows))
    one.feed(1, Tick(run="r", d=dates[-1], ds=tuple(dates[:-1]), w=W, m=MODELS))
    many = Harness(StaticRegistry(market(IDS), PARTITIONS))
    replay(many, "r", rows, dates)
    assert one.stored == many.stored == expected(rows, IDS, dates)
    assert sorted(one.done, key=lambda t: t.as_of) == many.done


def test_duplicate_delivery_changes_nothing():
    rows = history(IDS, 50)
    h = Harness(StaticRegistry(market(IDS), PARTITIONS))
    h.feed(0, RowBatch("r", W, rows[:40]))
    before = dict(h.windows)
    again = h.feed(0, RowBatch("r", W, rows[:40]))  # the same event re-delivered
    assert again.writes.windows == {} and h.windows == before
    assert RunPartition.parse(h.runs[run_key("r", 0)]).received == 40  # counted once
    t = rows[39][1]
    first = h.feed(1, Tick(run="r", d=t, w=W, m=MODELS))
    second = h.feed(1, Tick(run="r", d=t, w=W, m=MODELS))
    assert not first.output_before_state  # a tick is computed whole whenever it comes
    assert [b.items for b in first.embeddings] == [b.items for b in second.embeddings]
    assert not first.ticks[0].redelivered and second.ticks[0].redelivered


def test_a_restart_from_state_ahead_of_the_committed_offsets_skips_what_it_applied():
    """The tables are restored from changelogs that hold writes of events whose offsets were never
    committed; those events come again to a fresh processor (cold caches)."""
    rows = history(IDS, 80)
    dates = sorted({r[1] for r in rows})
    h = Harness(StaticRegistry(market(IDS), PARTITIONS))
    batches = [
        RowBatch("r", W, [r for r in rows if d0 <= r[1] < d0 + timedelta(days=10)])
        for d0 in (DAY0 + timedelta(days=10 * k) for k in range(8))
    ]
    for offset, batch in enumerate(batches):
        h.feed(offset, batch)
    reference = Harness(StaticRegistry(market(IDS), PARTITIONS))
    for offset, batch in enumerate(batches):
        reference.feed(offset, batch)
    restarted = Harness(h.registry, windows=h.windows, runs=h.runs)  # same tables, new processor
    for offset, batch in list(enumerate(batches))[3:]:  # committed offset was 3: re-delivered
        assert restarted.feed(offset, batch).writes.windows == {}
    restarted.feed(8, Tick(run="r", d=dates[-1], ds=tuple(dates[-10:-1]), w=W, m=MODELS))
    assert restarted.stored == expected(rows, IDS, dates[-10:])
    assert h.windows == reference.windows


def test_a_tick_whose_output_was_not_committed_is_recomputed_whole_after_a_crash():
    """The state runs ahead of the sink: rows of later blocks are applied (and written to the
    changelog) while a tick's embeddings wait in the sink. Windows keep what that tick needs until
    faust has committed past it, so after a crash the re-delivered tick is computed whole."""
    rows = history(IDS, 200)  # the windows keep 3 * 10 + 15 days before the newest row
    tick_day = DAY0 + timedelta(days=40)
    h = Harness(StaticRegistry(market(IDS), PARTITIONS))
    h.feed(0, RowBatch("r", W, [r for r in rows if r[1] <= tick_day]))
    lost = h.feed(1, Tick(run="r", d=tick_day, w=W, m=MODELS), committed=False)  # in the sink at the crash
    assert lost.embeddings[0].items
    h.feed(2, RowBatch("r", W, [r for r in rows if r[1] > tick_day]))  # 160 days later: far past the slack
    restarted = Harness(h.registry, windows=h.windows, runs=h.runs)  # the tables, as the changelog restores them
    again = restarted.feed(1, Tick(run="r", d=tick_day, w=W, m=MODELS))
    assert again.embeddings[0].redelivered and not again.dead_letters
    assert restarted.stored == expected(rows, IDS, [tick_day])
    # Once its offset is committed, the windows drop those rows at the next change.
    restarted.feed(3, RowBatch("r", W, [("A", max(r[1] for r in rows) + timedelta(days=1), 9.0, 9.0)]))
    assert window_store.read(restarted.windows, window_key("r", "A")).horizon > day_number(tick_day)


def test_a_tick_written_by_the_sink_but_not_yet_committed_by_faust_is_also_recomputed_whole():
    """The sink wrote the tick's embeddings, then the worker ran on for seconds before faust's next
    offset commit, and died: the tick comes again, with windows from the state written meanwhile."""
    rows = history(IDS, 200)
    tick_day = DAY0 + timedelta(days=40)
    h = Harness(StaticRegistry(market(IDS), PARTITIONS))
    h.feed(0, RowBatch("r", W, [r for r in rows if r[1] <= tick_day]))
    h.feed(1, Tick(run="r", d=tick_day, w=W, m=MODELS), commit_offsets=False)  # written, offset not committed
    h.feed(2, RowBatch("r", W, [r for r in rows if r[1] > tick_day]), commit_offsets=False)
    restarted = Harness(h.registry, windows=h.windows, runs=h.runs)
    again = restarted.feed(1, Tick(run="r", d=tick_day, w=W, m=MODELS))
    assert not again.dead_letters
    assert restarted.stored == expected(rows, IDS, [tick_day]) and restarted.done[0].embedded == 3


def test_corrections_and_deletions_re_emit_what_they_reach_and_remove_what_falls_short():
    rows = history(IDS, 60)
    # The windows keep 45 days before the newest row (day 59): ticks from day 44 on stay recomputable.
    dates = sorted({r[1] for r in rows if r[1] >= DAY0 + timedelta(days=46)})
    h = Harness(StaticRegistry(market(IDS), PARTITIONS))
    offset = replay(h, LIVE_RUN, rows, dates)
    assert h.stored == expected(rows, IDS, dates)
    # A restated close, a deleted row of another instrument, and one that removes enough of C's
    # look-back that its newest embeddings disappear.
    target = next(r for r in rows if r[0] == "A" and r[1] == dates[3])
    corrected = [r if r is not target else (r[0], r[1], r[2] * 1.5, r[3] + 7) for r in rows]
    gone_b = next(r for r in rows if r[0] == "B" and r[1] == dates[2])
    c_rows = [r for r in rows if r[0] == "C" and r[1] >= dates[-1] - timedelta(days=3 * W)]
    gone = {gone_b[:2], *[r[:2] for r in c_rows[:-5]]}  # 5 rows left: fewer than int(0.87 * W)
    after = [r for r in corrected if r[:2] not in gone]
    fx = h.feed(
        offset,
        RowBatch(
            LIVE_RUN, W, [(target[0], target[1], target[2] * 1.5, target[3] + 7), *sorted(gone, key=lambda k: k[1])]
        ),
    )
    assert fx.output_before_state  # a re-delivery would skip these windows: their output must land first
    want = expected(after, IDS, dates)
    assert any(k[0] == "C" and k[1] == dates[-1] for k in expected(rows, IDS, dates)) and not any(
        k[0] == "C" and k[1] == dates[-1] for k in want
    )  # the deletion matters
    assert h.stored == want


def test_a_live_correction_older_than_the_windows_goes_to_the_database_path():
    rows = history(IDS, 90)  # newest row day 89 (2020-03-30): the windows keep rows from 2020-02-14
    early, mid, last = DAY0 + timedelta(days=30), DAY0 + timedelta(days=50), max(r[1] for r in rows)
    h = Harness(StaticRegistry(market(IDS), PARTITIONS))
    offset = replay(h, LIVE_RUN, rows, [early, mid, last])
    assert {k[1] for k in h.stored} == {early, mid, last}
    row = [r for r in rows if r[0] == "A" and r[1] <= early][-1]
    fx = h.feed(offset, RowBatch(LIVE_RUN, W, [(row[0], row[1], row[2] * 2, row[3])]))
    assert not fx.dead_letters and not fx.embeddings and fx.left_to_database == 1  # counted, not refused
    # Held by the window, so applied (later ticks need it), but the 2020-02-20 tick's look-back
    # (from 2020-01-21) is gone: the database path recomputes that embedding.
    row = [r for r in rows if r[0] == "A" and r[1] <= mid][-1]
    fx = h.feed(offset + 1, RowBatch(LIVE_RUN, W, [(row[0], row[1], row[2] * 2, row[3])]))
    assert not fx.dead_letters and fx.left_to_database == 1
    assert fx.writes.windows


def test_a_replay_correction_older_than_its_windows_is_dead_lettered():
    rows = history(IDS, 90)
    early, last = DAY0 + timedelta(days=30), max(r[1] for r in rows)
    h = Harness(StaticRegistry(market(IDS), PARTITIONS))
    offset = replay(h, "replay-old", rows, [early, last])
    row = [r for r in rows if r[0] == "A" and r[1] <= early][-1]
    fx = h.feed(offset, RowBatch("replay-old", W, [(row[0], row[1], row[2] * 2, row[3])]))
    assert [d.reason.split(";")[0] for d in fx.dead_letters] == [
        "row older than the stream keeps (45 days before the instrument's newest row)"
    ]


def test_a_bad_row_and_an_unknown_instrument_cost_exactly_themselves():
    rows = history(IDS, 40)
    h = Harness(StaticRegistry(market(IDS), PARTITIONS))
    raw = RowBatch(
        "r", W, rows + [("NOPE", rows[0][1], 1.0, 1.0)], rejected=[(NON_POSITIVE_CLOSE, ["A", "2020-01-02", 0, 5])]
    )
    fx = h.feed(0, raw)
    assert sorted(d.reason for d in fx.dead_letters) == [NON_POSITIVE_CLOSE, "unknown instrument 'NOPE'"]
    assert b'"A", "2020-01-02", 0, 5' in next(payload(d) for d in fx.dead_letters if d.reason == NON_POSITIVE_CLOSE)
    h.feed(1, Tick(run="r", d=rows[-1][1], w=W, m=MODELS))
    assert h.stored == expected(rows, IDS, [rows[-1][1]])
    assert RunPartition.parse(h.runs[run_key("r", 0)]).received == len(rows) + 2  # every row sent counts


def test_a_live_tick_covers_its_market_and_counts_what_it_could_not_compute():
    infos = market(["A", "B", "THIN", "NEW"], "US") | market(["J"], "JP") | market(["OLD"], "US", selectable=False)
    h = Harness(StaticRegistry(infos, PARTITIONS))
    rows = [r for r in history(["A", "B", "J", "OLD"], 50)] + [("THIN", DAY0 + timedelta(days=45), 3.0, 1.0)]
    h.feed(0, RowBatch(LIVE_RUN, W, rows))
    day = max(r[1] for r in rows)
    fx = h.feed(1, Tick(d=day, w=W, m=MODELS, mk="US", o=99))
    assert {k[0] for k in h.stored} == {"A", "B"}  # not J (another market), not OLD (not ACTIVE)
    assert h.stored == expected(rows, ["A", "B"], [day])
    (done,) = h.done
    assert (done.embedded, done.insufficient) == (2, 2)  # THIN (one row), NEW (no history at all)
    assert set(fx.ticks[0].insufficient) == {"THIN", "NEW"} and "NEW" in fx.ticks[0].missing_today
    assert fx.lost_windows == ["NEW"]  # the bootstrap is asked to load it
    # THIN's window is checked against prices_daily: the one row of the look-back it holds
    look_back = (day - timedelta(days=LOOKBACK_FACTOR * W), day)
    assert fx.short_windows is not None and fx.short_windows.held == {"THIN": 1}
    assert (fx.short_windows.since, fx.short_windows.until) == look_back
    assert h.feed(1, Tick(d=day, w=W, m=MODELS, mk="US", o=99)).short_windows is None  # asked once, not again
    assert fx.embeddings[-1].scope == "US"
    # A correction of J re-emits nothing for the US tick; one of A does.
    a_row = next(r for r in rows if r[0] == "A" and r[1] == day)
    j_row = next(r for r in rows if r[0] == "J" and r[1] <= day)
    fx = h.feed(2, RowBatch(LIVE_RUN, W, [(j_row[0], j_row[1], 99.0, 1.0), (a_row[0], a_row[1], 99.0, 1.0)]))
    assert {i for b in fx.embeddings for i, *_ in b.items} == {"A"}


def test_a_tick_whose_look_back_the_window_no_longer_holds_is_dead_lettered():
    rows = history(IDS, 200)
    h = Harness(StaticRegistry(market(IDS), PARTITIONS))
    h.feed(0, RowBatch("r", W, rows))  # keeps 3*10 + 15 days before the newest row
    fx = h.feed(1, Tick(run="r", d=DAY0 + timedelta(days=60), w=W, m=MODELS))
    assert len(fx.dead_letters) == 1 and "no longer hold the look-back" in fx.dead_letters[0].reason
    assert h.stored == {} and h.done[0].embedded == 0 and h.done[0].insufficient == 3


def test_a_replay_tick_reports_rows_that_never_arrived():
    rows = history(IDS, 40)
    h = Harness(StaticRegistry(market(IDS), PARTITIONS))
    h.feed(0, RowBatch("r", W, rows[:-5]))
    fx = h.feed(1, Tick(run="r", d=rows[-1][1], w=W, m=MODELS, n=(len(rows),)))
    assert fx.embeddings[-1].rows_missing == 5


def test_the_end_of_a_run_deletes_its_state_and_the_live_run_never_ends():
    rows = history(IDS, 40)
    h = Harness(StaticRegistry(market(IDS), PARTITIONS))
    h.feed(0, RowBatch("r", W, rows))
    h.feed(1, RowBatch(LIVE_RUN, W, rows))
    fx = h.feed(2, RunEnd(run="r"))
    assert {k for k in fx.writes.windows if k.count(SEP) == 1} == {window_key("r", i) for i in IDS}
    assert set(fx.writes.windows.values()) == {None}  # every head and chunk of the run deleted
    assert {k.split(SEP)[0] for k in h.windows} == {LIVE_RUN} and run_key("r", 0) not in h.runs
    with pytest.raises(BadMessage, match="never ends"):
        h.feed(3, RunEnd(run=LIVE_RUN))


def test_a_query_of_the_live_windows_computes_its_selection_and_leaves_the_live_run_alone():
    ids = [f"Q{k}" for k in range(6)]
    infos = market(ids, "US") | market(["J"], "JP")
    h = Harness(StaticRegistry(infos, PARTITIONS))
    rows = history(ids + ["J"], 60)
    h.feed(0, RowBatch(LIVE_RUN, W, rows))
    runs_before = dict(h.runs)
    days = sorted({r[1] for r in rows})[-3:]
    fx = h.feed(1, Tick(d=days[-1], ds=tuple(days[:-1]), w=W, m=MODELS, mk="US", q="query-1", lim=3, off=2))
    assert {b.run for b in fx.embeddings} == {"query-1"} and fx.embeddings[0].scope == ""
    assert h.stored == expected(rows, ["Q2", "Q3", "Q4"], days)  # the market's 3rd to 5th, by id
    assert [t.as_of for t in h.done] == days and h.runs == runs_before  # no tick of the live run recorded
    h.stored.clear()
    h.feed(2, Tick(d=days[-1], w=W, m=MODELS[:1], q="query-2", ids=("J", "Q0")))
    assert h.stored == expected(rows, ["J", "Q0"], [days[-1]], MODELS[:1])
    # A later correction re-emits live ticks only: the queries were point-in-time answers.
    fx = h.feed(3, RowBatch(LIVE_RUN, W, [("Q3", days[-1], 99.0, 1.0)]))
    assert fx.embeddings == []


def look_back(rows: list[tuple], ids: list[str], as_of: date) -> dict:
    """The windows `streams.lookback.DbLookback` reads for a query of `as_of`: rows of its look-back on."""
    first = as_of - timedelta(days=LOOKBACK_FACTOR * W)
    out = {}
    for i in ids:
        own = [r for r in rows if r[0] == i and first <= r[1] <= as_of]
        if own:
            out[i] = window_of(
                History(
                    np.array([r[1] for r in own], dtype="datetime64[D]"),
                    np.array([r[2] for r in own]),
                    np.array([r[3] for r in own]),
                ),
                day_number(first),
            )
    return out


def test_a_query_reading_its_look_back_from_the_database_computes_from_it_and_leaves_the_state_alone():
    h = Harness(StaticRegistry(market(IDS), PARTITIONS))
    rows = history(IDS, 90)
    day = sorted({r[1] for r in rows})[-20]
    h.feed(0, RowBatch(LIVE_RUN, W, [r for r in rows if r[1] > day]))  # the live windows hold only newer rows
    state = (dict(h.windows), dict(h.runs))
    tick = Tick(d=day, w=W, m=MODELS, q="query-1", ids=("A", "B", "GONE"), db=True)
    fx = h.proc.process(1, tick, look_back(rows, ["A", "B"], day))
    assert {b.run for b in fx.embeddings} == {"query-1"} and not fx.dead_letters and not fx.lost_windows
    got = {(i, d, m): v for b in fx.embeddings for i, d, m, v in b.items}
    assert {k: v for k, v in got.items() if v} == expected(rows, ["A", "B"], [day])
    assert {k for k, v in got.items() if not v} == {("GONE", day, m) for m in MODELS}  # no row at all: absent
    assert fx.writes.windows == {} and fx.writes.runs == {} and (h.windows, h.runs) == state
    with pytest.raises(BadMessage, match="without it"):
        h.proc.process(2, tick)


def test_a_tick_names_the_keys_it_asked_for_without_enough_history_and_windows_it_lacks():
    rows = history(["A", "B"], 40) + [("C", DAY0 + timedelta(days=38), 12.0, 5.0)]  # C: one row, too short
    h = Harness(StaticRegistry(market(["A", "B", "C", "D"]), PARTITIONS))  # D: no window at all
    h.feed(0, RowBatch(LIVE_RUN, W, sorted(rows, key=lambda r: r[1])))
    day = DAY0 + timedelta(days=39)
    fx = h.feed(1, Tick(run=LIVE_RUN, d=day, w=W, m=MODELS, mk="M1"))
    (batch,) = fx.embeddings
    absent = sorted((i, d, m) for i, d, m, v in batch.items if not v)
    assert absent == sorted((i, day, m) for i in ("C", "D") for m in MODELS)  # recorded absent by the sink
    assert {(i, d, m) for i, d, m, v in batch.items if v} == set(expected(rows, ["A", "B"], [day]))
    assert batch.recheck == (("D", day),)  # no window: the database path computes it from prices_daily
    assert fx.lost_windows == ["D"]
