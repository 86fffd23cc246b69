"""Windows kept in chunks (`streams/window_store.py`), over dict tables: what is read back is the window that
was written, and a day's rows rewrite the head only."""

from __future__ import annotations

import numpy as np
import pytest

from streams import window_store
from streams.window import Window, retention_days
from streams.window_store import CHUNK_DAYS, LOST, chunk_key, read, writes

KEEP = retention_days(63, 15)


def apply(table: dict[str, bytes], writes_: dict[str, bytes | None]) -> None:
    for key, value in writes_.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value


def same(a: Window, b: Window) -> bool:
    return (a.applied_offset, a.horizon) == (b.applied_offset, b.horizon) and a.rows.tobytes() == b.rows.tobytes()


def trading_days(start: int, n: int) -> list[int]:
    days, d = [], start
    while len(days) < n:
        if d % 7 not in (2, 3):  # day 0 (1970-01-01) was a Thursday: 2 and 3 are Saturday and Sunday
            days.append(d)
        d += 1
    return days


def test_random_corrections_deletions_and_days_read_back_as_written():
    """Every kind of change a window sees (a bootstrap's history, days appended, corrections of old days,
    deletions, a deleted newest row, moving horizons): after each, the table reads back the same window and
    holds no chunk the head does not list."""
    rng = np.random.default_rng(7)
    table: dict[str, bytes] = {}
    stored = read(table, "w")
    days = trading_days(18_000, 600)
    history = [(d, float(rng.uniform(10, 20)), float(rng.integers(1, 10**6))) for d in days[:150]]
    offset = 0
    steps = [history] + [[(d, 1.0 + k, 2.0)] for k, d in enumerate(days[150:400])]
    for k in range(60):  # corrections and deletions of held days, and out-of-order inserts
        pick = int(rng.choice(days[:400]))  # held, not yet arrived, or older than the horizon by then
        steps.insert(int(rng.integers(1, len(steps))), [(pick, None, None)] if k % 3 == 0 else [(pick, 5.0, 6.0)])
    for changes in steps:
        offset += 1
        after, _ = stored.apply(changes, KEEP, offset)
        written = writes("w", stored, after, [c[0] for c in changes])
        # the same writes when the stored head is at hand (the live path: its sealed chunks taken from it)
        assert writes("w", stored, after, [c[0] for c in changes], before_head=table.get("w")) == written
        apply(table, written)
        got = read(table, "w")
        assert same(got, after)
        heads = [k for k in table if k == "w"]
        assert len(heads) == 1
        _, sealed = window_store.layout(after, window_store.chunk_phase("w"))
        assert set(table) == {"w"} | {chunk_key("w", c) for c in sealed}
        stored = after
    apply(table, writes("w", stored, None))
    assert table == {}


def test_a_day_appended_writes_the_head_alone_and_far_fewer_bytes_than_the_window():
    table: dict[str, bytes] = {}
    days = trading_days(18_000, 400)
    stored, _ = read(table, "w").apply([(d, 10.0, 1.0) for d in days[:200]], KEEP, 1)
    apply(table, writes("w", read(table, "w"), stored))
    sizes = []
    for k, d in enumerate(days[200:300]):
        after, _ = stored.apply([(d, 11.0, 2.0)], KEEP, 2 + k)
        w = writes("w", stored, after, [d])
        # the live path, its head written from the stored one's bytes where only the head changes
        assert writes("w", stored, after, [d], before_head=table["w"]) == w
        apply(table, w)
        sizes.append(window_store.value_bytes(w.values()))
        stored = after
    whole = len(stored.to_bytes())  # what one value per window wrote every day
    assert whole > 2_000
    assert max(sizes) <= whole / 2 and np.mean(sizes) <= whole / 5
    assert same(read(table, "w"), stored)


def test_a_missing_chunk_reads_as_a_lost_window():
    table: dict[str, bytes] = {}
    days = trading_days(18_000, 100)
    window, _ = read(table, "w").apply([(d, 10.0, 1.0) for d in days], 10_000, 1)
    apply(table, writes("w", read(table, "w"), window))
    sealed = [k for k in table if k != "w"]
    assert len(sealed) >= (days[-1] - days[0]) // CHUNK_DAYS - 1
    del table[sealed[0]]
    assert read(table, "w") is LOST


@pytest.mark.parametrize("n", [0, 1])
def test_an_empty_or_single_row_window(n):
    table: dict[str, bytes] = {}
    window, _ = read(table, "w").apply([(18_000, 1.0, 2.0)][:n] or [(18_000, None, None)], KEEP, 3)
    apply(table, writes("w", read(table, "w"), window))
    assert same(read(table, "w"), window)


def test_a_replay_window_is_one_value_read_back_as_written():
    table: dict[str, bytes] = {}
    days = trading_days(18_000, 300)
    stored = read(table, "r")
    for k in range(0, 300, 60):  # blocks of a replay
        after, _ = stored.apply([(d, 1.0 + d, 2.0) for d in days[k : k + 60]], KEEP, k + 1)
        w = writes("r", stored, after, days[k : k + 60], chunked=False)
        assert list(w) == ["r"]
        apply(table, w)
        assert table.keys() == {"r"} and same(read(table, "r"), after)
        stored = after
    apply(table, writes("r", stored, None, chunked=False))
    assert table == {}


def test_chunk_bounds_are_the_chunks_that_hold_rows_with_their_row_ranges():
    rng = np.random.default_rng(13)
    for _ in range(300):
        days = np.sort(rng.choice(np.arange(-400, 400), size=int(rng.integers(0, 60)), replace=False)).astype("<i4")
        want = {}
        for k, day in enumerate(days.tolist()):
            lo, hi = want.get(day // window_store.CHUNK_DAYS, (k, k))
            want[day // window_store.CHUNK_DAYS] = (lo, k + 1)
        assert window_store.chunk_bounds(days) == [(c, lo, hi) for c, (lo, hi) in sorted(want.items())]


def test_windows_seal_their_chunks_on_different_days():
    """The same days appended to many windows: each seals a chunk (a write beside its head) on a day of its
    own phase, so no day rewrites every window of a market; every window reads back as written."""
    table: dict[str, bytes] = {}
    keys = [f"live\x1fI{n}" for n in range(64)]
    days = trading_days(18_000, 120)
    stored = {k: read(table, k) for k in keys}
    sealing_days: dict[int, int] = {}
    for offset, day in enumerate(days, start=1):
        for key in keys:
            after, _ = stored[key].apply([(day, 10.0, 1.0)], KEEP, offset)
            written = writes(key, stored[key], after, [day])
            if len(written) > 1:
                sealing_days[day] = sealing_days.get(day, 0) + 1
            apply(table, written)
            assert same(read(table, key), after)
            stored[key] = after
    assert len(sealing_days) > 10 and max(sealing_days.values()) < len(keys) // 2
