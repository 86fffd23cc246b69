"""The pure stream state: window rows and the tick log (no broker needed)."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest

from shared.contract.encoder import embed, to_bytes
from shared.contract.models import get_model
from streams import ticks
from streams.state import RunPartition, TickRecord
from streams.ticks import embeddings_at
from streams.window import HEADER, Window, date_of, day_number, upsert_row, upsert_rows


def rows_of(state):
    return Window.parse(state).rows


def test_upsert_keeps_rows_sorted_replaces_a_day_and_trims_old_rows():
    state = None
    for k in (5, 1, 3):
        state = upsert_row(state, date(2020, 1, 1) + timedelta(days=k), 10.0 + k, 100.0, keep_days=30)
    assert [date_of(int(d)) for d in rows_of(state)["day"]] == [date(2020, 1, 2), date(2020, 1, 4), date(2020, 1, 6)]
    state = upsert_row(state, date(2020, 1, 4), 99.5, 7.0, keep_days=30)  # correction
    rows = rows_of(state)
    assert rows.size == 3 and rows["close"][1] == 99.5 and rows["volume"][1] == 7.0
    state = upsert_row(state, date(2020, 2, 3), 1.0, 1.0, keep_days=30)  # horizon moves to 2020-01-04
    assert date_of(int(rows_of(state)["day"][0])) == date(2020, 1, 4)
    assert len(state) == HEADER.size + 3 * 20  # header + fixed-width 20-byte rows


def test_tick_embeddings_equal_the_encoder_over_the_same_rows():
    rng = np.random.default_rng(5)
    state, rows = None, []
    d = date(2021, 1, 4)
    for _ in range(80):
        c, v = float(rng.uniform(10, 20)), float(rng.integers(0, 1000))
        state = upsert_row(state, d, c, v, keep_days=220)
        rows.append((d, c, v))
        d += timedelta(days=1 if d.weekday() < 4 else 3)
    as_of = rows[-1][0]
    got = embeddings_at([("X", Window.parse(state))], [day_number(as_of)], 63, ["num-regime-core-v1"])
    dates, closes, volumes = Window.parse(state).arrays()
    want = to_bytes(embed(dates, closes, volumes, np.datetime64(as_of, "D"), 63, get_model("num-regime-core-v1")))
    assert got == [("X", as_of, "num-regime-core-v1", want)]
    assert embeddings_at([("Y", Window.parse(None))], [day_number(as_of)], 63, ["num-regime-core-v1"]) == []


@pytest.mark.parametrize("chunk", [ticks.CHUNK_TARGETS, 4])
def test_many_windows_at_many_dates_in_one_call_equal_one_at_a_time(monkeypatch, chunk):
    """The joint timeline must never let one instrument's look-back see another's rows, nor a chunk of its
    (window, day) pairs (4: chunks end inside a window's days) lose or move one."""
    monkeypatch.setattr(ticks, "CHUNK_TARGETS", chunk)
    rng = np.random.default_rng(11)
    windows, history = [], {}
    for k, start in enumerate((date(2020, 1, 1), date(2020, 3, 2), date(2019, 6, 3))):
        days = np.sort(rng.choice(np.arange(day_number(start), day_number(start) + 200), 120, replace=False))
        closes, volumes = rng.uniform(1, 500, days.size), rng.integers(0, 10**6, days.size).astype(float)
        closes[::17] = closes[::17] * 1e6  # outliers would leak into a neighbour's log returns
        state = upsert_rows(None, days, closes, volumes, keep_days=10_000)
        windows.append((f"I{k}", Window.parse(state)))
        history[f"I{k}"] = Window.parse(state).arrays()
    as_of_days = [day_number(date(2020, 5, 1)), day_number(date(2020, 4, 1)), day_number(date(2019, 12, 2))]
    models = ["numeric-simple-v1", "num-regime-core-v1"]
    items = embeddings_at(windows, as_of_days, 20, models)
    got = {(i, d, m): v for i, d, m, v in items}
    assert len(got) == len(items)
    want = {}
    for i, (dates, closes, volumes) in history.items():
        for day in as_of_days:
            for m in models:
                vec = embed(dates, closes, volumes, np.datetime64(date_of(day), "D"), 20, get_model(m))
                if vec is not None:
                    want[(i, date_of(day), m)] = to_bytes(vec)
    assert len(want) >= 10 and got == want


def test_upsert_rows_applies_a_batch_with_the_last_row_of_a_day_winning():
    days = np.array([day_number(date(2020, 1, d)) for d in (3, 2, 3, 6)])
    state = upsert_rows(None, days, np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.0, 0.0, 0.0]), keep_days=30)
    rows = Window.parse(state).rows
    assert [date_of(int(d)) for d in rows["day"]] == [date(2020, 1, 2), date(2020, 1, 3), date(2020, 1, 6)]
    assert rows["close"].tolist() == [2.0, 3.0, 4.0]


def test_tick_log_and_the_ticks_a_correction_reaches():
    state = RunPartition()
    for offset, day in enumerate((date(2020, 3, 2), date(2020, 3, 3), date(2020, 6, 1), date(2020, 9, 1))):
        state = state.with_ticks([TickRecord(day_number(day), 20, ("numeric-simple-v1",), "*")], 100, offset)
    assert [date_of(t.day) for t in state.ticks] == [date(2020, 6, 1), date(2020, 9, 1)]  # older than 100 days dropped
    assert state.tick_offset == 3 and RunPartition.parse(state.to_bytes()) == state
    reach = state.ticks_reaching(day_number(date(2020, 5, 15)))  # 3N = 60 days: up to 2020-07-14
    assert [date_of(t.day) for t in reach] == [date(2020, 6, 1)]
    assert state.ticks_reaching(day_number(date(2020, 9, 2))) == []


def test_deletions_and_corrections_apply_in_order_and_too_old_changes_are_reported():
    d = [day_number(date(2020, 1, k)) for k in range(1, 11)]
    window, _ = Window.parse(None).apply([(day, 10.0 + k, 1.0) for k, day in enumerate(d)], keep_days=30, offset=1)
    window, too_old = window.apply(
        [(d[3], None, None), (d[4], 99.0, 2.0), (d[4], None, None), (d[5], None, None), (d[5], 55.0, 5.0)],
        keep_days=30,
        offset=2,
    )
    assert too_old == []
    assert [date_of(int(x)) for x in window.days] == [date(2020, 1, k) for k in (1, 2, 3, 6, 7, 8, 9, 10)]
    assert window.rows["close"][3] == 55.0 and window.holds(d[5]) and not window.holds(d[4])
    later, too_old = window.apply([(day_number(date(2020, 3, 1)), 1.0, 1.0), (d[0], 5.0, 5.0)], keep_days=30, offset=3)
    assert too_old == [1]  # 2020-01-01 is older than 30 days before 2020-03-01: not held, reported
    assert date_of(int(later.days[0])) == date(2020, 3, 1)


def test_offsets_and_horizon_tell_what_a_window_can_reproduce():
    state = upsert_row(None, date(2020, 1, 6), 10.0, 1.0, keep_days=30, offset=7)
    window = Window.parse(state)
    assert window.applied_offset == 7 and window.covers(day_number(date(2030, 1, 1)), 63)  # nothing dropped yet
    state = upsert_row(state, date(2020, 3, 2), 11.0, 1.0, keep_days=30, offset=9)
    window = Window.parse(state)
    assert window.applied_offset == 9
    assert date_of(window.horizon) == date(2020, 2, 1)  # 30 days before 2020-03-02: older rows were dropped
    assert window.covers(day_number(date(2020, 3, 2)), 10)  # look-back from 2020-02-01
    assert not window.covers(day_number(date(2020, 2, 20)), 10)  # would need rows from 2020-01-21
    older = upsert_row(state, date(2020, 3, 3), 12.0, 1.0, keep_days=30, offset=3)
    assert Window.parse(older).applied_offset == 9  # the offset never moves back


def test_appending_rows_takes_the_fast_path_and_equals_the_general_one():
    rng = np.random.default_rng(3)
    window, _ = Window.parse(None).apply([(d, 10.0 + d % 7, float(d)) for d in range(18000, 18200, 2)], 120, 1)
    for offset in range(2, 8):
        start = int(window.days[-1]) + int(rng.integers(1, 5))
        changes = [
            (d, float(rng.uniform(1, 99)), float(rng.integers(0, 9999)))
            for d in range(start, start + int(rng.integers(1, 40)), int(rng.integers(1, 3)))
        ]
        fast = window.apply(changes, 120, offset)
        # A deletion of a day nobody holds changes nothing, but sends apply down its general path.
        general = window.apply(changes + [(changes[-1][0] + 1, None, None)], 120, offset)
        assert fast[0].to_bytes() == general[0].to_bytes() and fast[1] == general[1]
        window = fast[0]
    assert window.applied_offset == 7 and window.days[0] >= window.horizon


def test_one_row_a_day_takes_the_fast_path_and_equals_the_general_one():
    """A live day (one row per instrument): appended to an empty window, after the newest, across the horizon;
    a row at or before the newest day goes the general way."""
    window = Window.parse(None)
    for offset, day in enumerate([18000, 18001, 18003, 18130, 18131, 18131, 18100], start=1):
        change = [(day, 10.0 + offset, float(offset))]
        fast = window.apply(change, 120, offset)
        general = window.apply(change + [(day + 500, None, None)], 120, offset)
        assert fast[0].to_bytes() == general[0].to_bytes() and fast[1] == general[1]
        window = fast[0]
    assert window.days.tolist() == [18100, 18130, 18131] and window.rows["close"].tolist() == [17.0, 14.0, 16.0]


def test_appended_rows_the_horizon_passes_equal_the_general_path():
    """Rows appended far after the newest: the horizon they move passes every held row and the first added ones
    (reported too old), also with a floor that holds it back."""
    window, _ = Window.parse(None).apply([(d, 1.0, 2.0) for d in range(18000, 18010)], 120, 1)
    for floor in (None, 18005, 18300):
        changes = [(18200, 3.0, 4.0), (18400, 5.0, 6.0), (18401, 7.0, 8.0)]
        fast = window.apply(changes, 120, 2, floor)
        general = window.apply(changes + [(18402, None, None)], 120, 2, floor)
        assert fast[0].to_bytes() == general[0].to_bytes() and fast[1] == general[1]
    assert window.apply(changes, 120, 2)[1] == [0]  # 18200 is older than the horizon 18281


def test_live_and_replay_state_go_to_tables_of_their_own():
    from streams.state import ByRun, window_key

    live, replay = {}, {}
    tables = ByRun(live, replay)
    tables.put(window_key("live", "A"), b"1")
    tables.put(window_key("replay-x", "A"), b"2")
    tables.put(window_key("liver", "A"), b"3")  # a run id that merely starts like "live"
    assert live == {window_key("live", "A"): b"1"}
    assert replay == {window_key("replay-x", "A"): b"2", window_key("liver", "A"): b"3"}
    assert tables.get(window_key("replay-x", "A")) == b"2" and tables.get(window_key("live", "B")) is None
    tables.put(window_key("replay-x", "A"), None)
    assert window_key("replay-x", "A") not in replay
    raw = ByRun(live := {}, replay := {}, raw_keys=True)  # the worker's tables: keys as UTF-8 bytes
    raw.put(window_key("live", "É"), b"1")
    raw.put(window_key("replay-x", "A"), b"2")
    assert live == {window_key("live", "É").encode(): b"1"} and replay == {window_key("replay-x", "A").encode(): b"2"}
    assert raw.get(window_key("live", "É")) == b"1"
