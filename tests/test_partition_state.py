"""The processor's state (`streams/partition_state.py`) over dict tables: reads see the partition's own writes
before the adapter applies them, the window cache stays within its bound, and what it writes reads back the
same from the tables once applied."""

from __future__ import annotations

from shared.broker.topics import HEAD_BLOCKS
from streams import window_store
from streams.partition_state import PartitionState
from streams.state import LIVE_PREFIX, RunPartition, Writes, run_key, window_key
from streams.window import NO_ROWS, Window, retention_days

KEEP = retention_days(63, 15)


def window_of(days: int, offset: int) -> Window:
    window, _ = NO_ROWS.apply([(18_000 + d, 10.0 + d, 100.0) for d in range(days)], KEEP, offset)
    return window


def apply(table: dict[str, bytes], writes: dict[str, bytes | None]) -> None:
    for key, value in writes.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value


def test_a_write_is_read_back_at_once_and_from_the_tables_once_applied():
    windows: dict[str, bytes] = {}
    runs: dict[str, bytes] = {}
    state = PartitionState(3, windows, runs)
    key = window_key("live", "AAA")
    assert key.startswith(LIVE_PREFIX)
    written, writes = window_of(80, offset=7), Writes()
    state.write_window(writes, key, state.window(key), written, [18_000 + d for d in range(80)])
    state.flush(writes, 7)
    assert windows == {}  # nothing reaches the tables before the adapter applies the writes
    assert state.window(key) is written
    apply(windows, writes.windows)
    fresh = PartitionState(3, windows, runs)
    read = fresh.window(key)
    assert (read.applied_offset, read.rows.tobytes()) == (written.applied_offset, written.rows.tobytes())

    after = state.run("replay-1").with_received(5, 9)
    state.write_run(writes, "replay-1", state.run("replay-1"), after)
    assert writes.runs == {run_key("replay-1", 3): after.to_bytes()} and state.run("replay-1") == after
    apply(runs, writes.runs)
    assert PartitionState(3, windows, runs).run("replay-1") == after


def test_an_unchanged_run_state_writes_nothing_and_a_deleted_one_writes_a_tombstone():
    state, writes = PartitionState(0, {}, {}), Writes()
    before = state.run("r")
    state.write_run(writes, "r", before, before)
    assert not writes
    state.write_run(writes, "r", before, None)
    assert writes.runs == {run_key("r", 0): None}
    assert state.run("r") == RunPartition.parse(None)


def test_the_window_cache_keeps_the_most_recent_within_its_bound_and_forget_empties_it():
    windows: dict[str, bytes] = {}
    state = PartitionState(0, windows, {}, cache_windows=2)
    for name in ("A", "B", "C"):
        writes = Writes()
        key = window_key("replay-1", name)
        state.write_window(writes, key, state.window(key), window_of(5, offset=1))
        apply(windows, writes.windows)
    assert state.cached_windows == 2
    state.forget()
    assert state.cached_windows == 0
    assert state.window(window_key("replay-1", "A")).rows.size == 5  # read again from the table


def test_live_heads_of_one_event_go_into_one_value_per_block_after_the_chunks():
    """A live day of many instruments writes each head block it changed once, last; read back whole."""
    windows: dict[str, bytes] = {}
    state, writes = PartitionState(2, windows, {}), Writes()
    written = {}
    for n in range(200):
        key = window_key("live", f"I{n}")
        written[key] = window_of(40 + n % 30, offset=5)
        state.write_window(writes, key, state.window(key), written[key], [18_000 + d for d in range(70)])
    state.flush(writes, 5)
    blocks = [k for k in writes.windows if k.count("\x1f") == 3]
    assert len(blocks) == len({window_store.block_of(k) for k in written}) <= HEAD_BLOCKS
    assert list(writes.windows)[-len(blocks) :] == blocks  # the blocks after every chunk
    assert not any(k in writes.windows for k in written)  # no head of its own
    apply(windows, writes.windows)
    fresh = PartitionState(2, windows, {})
    for key, window in written.items():
        got = fresh.window(key)
        assert (got.applied_offset, got.horizon, got.rows.tobytes()) == (5, window.horizon, window.rows.tobytes())
    again = Writes()
    state.flush(again, 6)
    assert not again  # nothing changed since: no block written again


def test_a_restored_block_keeps_each_head_at_its_newest_offset():
    """A frozen worker's late block (an older offset for one head, the only copy of another) merges into the
    stored block head by head (`window_store.merge_blocks`, as the restore applies it)."""
    a, b = window_key("live", "A"), window_key("live", "B")
    newer = window_store.writes(a, NO_ROWS, window_of(30, offset=9))[a]
    older = window_store.writes(a, NO_ROWS, window_of(20, offset=4))[a]
    other = window_store.writes(b, NO_ROWS, window_of(10, offset=4))[b]
    key = window_store.block_key(0, 0).encode()
    records = [
        (0, key, window_store.encode_block(9, {a: newer})),
        (0, key, window_store.encode_block(4, {a: older, b: other})),
    ]
    kept = window_store.fresh_records(records, lambda _p, _k: None)
    assert [k for k, _ in kept] == [0, 1]
    offset, heads = window_store.decode_block(kept[-1][1])
    assert offset == 9 and heads == {a: newer, b: other}
