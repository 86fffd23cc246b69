"""Writes that cannot go back in time (issue 26): each interleaving behind a stale embedding, pinned.

A worker frozen (SIGSTOP, a GC pause, a stalled VM) past its session timeout wakes up holding what it
computed before; a re-delivered tick is computed from state restored behind what was written; a slow
correction read prices before a change that a faster writer already applied; a relay that lost its turn
publishes rows it read before the next relay's. Each test below replays one of them at a chosen step and
checks the table ends equal to SPEC section 3 over the prices as they are — and each fails when the
fencing (`computed_from` in `shared.store.embedding_store`, the window's stamp in `streams.processor`) is removed.
"""

from __future__ import annotations

import subprocess
import time
from datetime import date, timedelta

import psycopg

import backfill.recompute as recompute
from backfill.recompute import rewrite_keys
from live.corrections import drain_once
from shared.contract.messages import LIVE_RUN, RowBatch, Tick
from shared.store.embedding_store import set_cause, write_embeddings
from shared.store.maintained_keys import MaintainedKey, queue_recompute, write_absent
from shared.store.write_claims import next_round, stamp
from streams.sink import SinkWriter
from tests.support.cli import EMBEDDER, run_command
from tests.support.fakes import Table, World
from tests.support.helpers import expected, stored
from tests.support.platform import add_instruments, insert_prices

W = 10
MODELS = ("numeric-simple-v1",)
IDS = ["A", "B"]
DAY0 = date(2020, 1, 1)


class Worker(World):
    """A worker's stream logic (`tests.support.fakes.World`) whose sink only collects what it would write, so a
    test chooses when (and by which writer) it reaches PostgreSQL."""

    def __init__(self, windows: Table | None = None, runs: Table | None = None):
        super().__init__(IDS, W, windows, runs)

    def feed(self, offset: int, message) -> list:  # type: ignore[override]
        """Process one message; returns the embedding batches it produced."""
        before = len(self.sink.committed)
        super().feed(offset, message)
        return self.sink.committed[before:]

    def restored(self) -> Worker:
        """Another worker taking these partitions over with the state as the changelogs hold it now."""
        windows, runs = Table([]), Table([])
        windows.update(self.windows)
        runs.update(self.runs)
        return Worker(windows, runs)


def history(days: int = 40) -> list[tuple]:
    return [
        (i, DAY0 + timedelta(days=n), 10.0 + k + n * 0.1, 100.0 + n)
        for n in range(days)
        for k, i in enumerate(IDS)
        if (DAY0 + timedelta(days=n)).weekday() < 5
    ]


def write(db_url: str, batches: list) -> int:
    """What the worker's sink does with `batches`: one fenced transaction; returns the refused count."""
    writer = SinkWriter(db_url)
    try:
        return writer.write_once(batches)
    finally:
        writer.close()


def vectors(batches: list) -> dict[tuple, bytes]:
    return {(i, d, m): v for b in batches for i, d, m, v in b.items}


def test_a_frozen_workers_batch_written_after_a_newer_correction_loses(db_url):
    """Interleaving 1, the zombie sink: a worker computed a tick, froze before its sink committed, and woke
    after another worker had applied a correction of a row in that tick's look-back and written it."""
    rows = history()
    last = rows[-1][1]
    zombie = Worker()
    zombie.feed(0, RowBatch(LIVE_RUN, W, rows, stamp=stamp(1, 1)))
    tick_out = zombie.feed(1, Tick(d=last, w=W, m=MODELS, f=stamp(1, 2)))  # held by the frozen sink
    successor = zombie.restored()
    corrected = (IDS[0], last - timedelta(days=3), 55.0, 999.0)
    correction_out = successor.feed(2, RowBatch(LIVE_RUN, W, [corrected], stamp=stamp(2, 1)))
    assert correction_out and vectors(correction_out) != {
        k: v for k, v in vectors(tick_out).items() if k in vectors(correction_out)
    }
    assert write(db_url, correction_out) == 0
    assert write(db_url, tick_out) == len(MODELS)  # the zombie wakes: its one stale key is refused
    table = stored(db_url)
    assert table[(IDS[0], last, MODELS[0])] == vectors(correction_out)[(IDS[0], last, MODELS[0])]
    assert table[(IDS[1], last, MODELS[0])] == vectors(tick_out)[(IDS[1], last, MODELS[0])]  # not stale: written
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT sum(refused) FROM embedder_write_refusals WHERE writer = 'live'").fetchone()[0] == 1


def test_a_tick_re_delivered_from_state_behind_the_table_loses(db_url):
    """Interleaving 2, the re-delivered tick: the first owner applied a correction and its sink committed, but
    its changelog write was lost with it; the next owner restores the state before the correction and
    processes the tick again from the committed offset (then the correction again)."""
    rows = history()
    last = rows[-1][1]
    first = Worker()
    first.feed(0, RowBatch(LIVE_RUN, W, rows, stamp=stamp(1, 1)))
    write(db_url, first.feed(1, Tick(d=last, w=W, m=MODELS, f=stamp(1, 2))))
    behind = first.restored()  # the changelogs as they were before the correction
    correction = RowBatch(LIVE_RUN, W, [(IDS[0], last - timedelta(days=1), 77.0, 5.0)], stamp=stamp(3, 1))
    corrected = first.feed(2, correction)
    assert write(db_url, corrected) == 0
    again = behind.feed(1, Tick(d=last, w=W, m=MODELS, f=stamp(1, 2)))  # re-delivered, from state behind
    assert write(db_url, again) == len(MODELS)
    key = (IDS[0], last, MODELS[0])
    assert stored(db_url)[key] == vectors(corrected)[key]
    assert write(db_url, behind.feed(2, correction)) == 0  # the correction again: the same bytes, written
    assert stored(db_url)[key] == vectors(corrected)[key]


def test_rows_published_by_a_relay_that_lost_its_turn_never_take_a_window_back(db_url):
    """Interleaving 3, the zombie relay: a relay read a row, froze, lost its lock (PostgreSQL restarted); the
    next relay published the row as corrected since; the first wakes and publishes what it had read. The
    window keeps the newer row, emits nothing for the stale one, and counts it."""
    rows = history()
    last = rows[-1][1]
    day = last - timedelta(days=2)
    worker = Worker()
    worker.feed(0, RowBatch(LIVE_RUN, W, rows, stamp=stamp(1, 1)))
    write(db_url, worker.feed(1, Tick(d=last, w=W, m=MODELS, f=stamp(1, 2))))
    newer = worker.feed(2, RowBatch(LIVE_RUN, W, [(IDS[0], day, 60.0, 7.0)], stamp=stamp(3, 1)))
    write(db_url, newer)
    stale = worker.feed(3, RowBatch(LIVE_RUN, W, [(IDS[0], day, 30.0, 7.0)], stamp=stamp(2, 4)))
    assert stale == []  # no correction computed from the stale row
    assert worker.metrics.stale_rows_skipped._value.get() == 1
    key = (IDS[0], last, MODELS[0])
    again = worker.feed(4, Tick(d=last, w=W, m=MODELS, f=stamp(4, 1)))  # the window still holds the newer row
    assert vectors(again)[key] == vectors(newer)[key]
    write(db_url, again)
    assert stored(db_url)[key] == vectors(newer)[key]


MODEL = "num-regime-core-v1"
D = date(2020, 6, 1)


def _market(db_url: str) -> list[tuple]:
    add_instruments(db_url, ["X"])
    rows = [("X", D - timedelta(days=k), 10.0 + k * 0.5, 100.0 + k) for k in range(150)]
    with psycopg.connect(db_url) as conn:
        insert_prices(conn, rows)
    return rows


def _relay_round(db_url: str, change: tuple[str, date]) -> None:
    """What the relay does with a captured change before publishing it: number a round, queue the change."""
    with psycopg.connect(db_url) as conn:
        next_round(conn)
        queue_recompute(conn, [change])


def test_a_slow_correction_that_read_prices_before_a_change_loses_to_the_one_after(db_url, monkeypatch):
    """Interleaving 4, the slow correction: the correction path read prices_daily and computed, then stalled
    (its worker frozen mid-transaction); the change after it was applied by another worker's correction
    path; the first then writes what it computed before."""
    _market(db_url)
    key = MaintainedKey("X", D, MODEL, 63)
    with psycopg.connect(db_url) as conn:
        rewrite_keys(conn, [key])
    _relay_round(db_url, ("X", D - timedelta(days=10)))
    real = recompute.expected_vectors

    def then_stalled(conn, keys):
        computed = real(conn, keys)  # from the prices as they were
        with psycopg.connect(db_url, autocommit=True) as platform:
            platform.execute("UPDATE prices_daily SET close = close * 1.5 WHERE trade_date = %s", (D - timedelta(5),))
        _relay_round(db_url, ("X", D - timedelta(days=5)))
        monkeypatch.setattr(recompute, "expected_vectors", real)
        with psycopg.connect(db_url, autocommit=True) as other:  # another worker's correction path, meanwhile
            assert drain_once(other).rewritten.changed == 1
        return computed

    monkeypatch.setattr(recompute, "expected_vectors", then_stalled)
    with psycopg.connect(db_url, autocommit=True) as conn:
        slow = drain_once(conn)
    assert slow.rewritten.refused == 1 and slow.rewritten.changed == 0
    assert stored(db_url) == expected(db_url, ["X"], [D], 63, [MODEL])


def test_absent_keys_are_fenced_like_rows(db_url):
    """Interleaving 5, deletions: a correction left a key too little history (its row deleted, the key
    recorded absent) while a frozen writer held a vector computed before it; and the other way round."""
    vec = b"\x01" * 1536
    with psycopg.connect(db_url) as conn:
        assert write_embeddings(conn, [("X", D, MODEL, 63, vec)], claim=10).changed == 1
        assert write_absent(conn, [("X", D, MODEL, 63)], claim=5).refused == 1  # older: the row stays
        conn.commit()
        assert stored(db_url)[("X", D, MODEL)] == vec
        assert write_absent(conn, [("X", D, MODEL, 63)], claim=20).changed == 1  # newer: the row goes
        assert write_embeddings(conn, [("X", D, MODEL, 63, vec)], claim=15).refused == 1  # the zombie's vector
        conn.commit()
        assert ("X", D, MODEL) not in stored(db_url)
        other = b"\x02" * 1536
        assert write_embeddings(conn, [("X", D, MODEL, 63, other)], claim=25).changed == 1  # history came back
        conn.commit()
        assert stored(db_url)[("X", D, MODEL)] == other
        assert conn.execute("SELECT count(*) FROM embedder_absent_embeddings").fetchone()[0] == 0


def test_a_write_ends_exactly_the_absent_records_of_the_keys_it_writes(db_url):
    """Absent records are looked for only between a write's first and last day: one on its last day, the only
    one there of its instruments, goes; another instrument's, and a day outside, stay."""
    vec = b"\x01" * 1536
    d2, d4 = D + timedelta(days=2), D + timedelta(days=4)
    with psycopg.connect(db_url) as conn:
        write_absent(conn, [("X", d2, MODEL, 63), ("X", d4, MODEL, 63), ("W", D, MODEL, 63)], claim=5)
        assert write_embeddings(conn, [("X", d2, MODEL, 63, vec), ("Y", D, MODEL, 63, vec)], claim=6).changed == 2
        conn.commit()
        left = conn.execute("SELECT entity_id, as_of_date FROM embedder_absent_embeddings ORDER BY 1, 2").fetchall()
    assert left == [("W", D), ("X", d4)]
    assert set(stored(db_url)) == {("X", d2, MODEL), ("Y", D, MODEL)}


def test_an_identical_vector_from_newer_prices_records_its_claim(db_url):
    """A change and its undoing (a row deleted and put back) leave the vector as it was; a writer that
    computed between them must still lose afterwards, so the newer claim is recorded with the same bytes
    (and keeps no version: nothing a reader sees changed)."""
    vec, between = b"\x01" * 1536, b"\x03" * 1536
    with psycopg.connect(db_url) as conn:
        write_embeddings(conn, [("X", D, MODEL, 63, vec)], claim=5)
        assert write_embeddings(conn, [("X", D, MODEL, 63, vec)], claim=7).changed == 1
        assert write_embeddings(conn, [("X", D, MODEL, 63, vec)], claim=7).changed == 0  # the same claim: nothing
        assert write_embeddings(conn, [("X", D, MODEL, 63, between)], claim=6).refused == 1
        conn.commit()
        assert conn.execute("SELECT count(*) FROM numeric_window_embedding_versions").fetchone()[0] == 0
    assert stored(db_url)[("X", D, MODEL)] == vec


def test_replay_direct_that_read_prices_before_a_correction_cannot_overwrite_it(db_url, cli_env):
    """Real processes: `embedder replay --direct` reads prices_daily, then its write waits for a lock held by
    a transaction that applies a correction made after that read; when it gets the rows, it must leave the
    newer ones alone. Without the fence its stale rows would stay (nothing else recomputes them here)."""
    rows = _market(db_url)
    days = sorted({d for _, d, _, _ in rows})[-20:]
    select = ["--from", str(days[0]), "--to", str(days[-1]), "--instrument-id", "X", "--model-id", MODEL]
    first = run_command([*EMBEDDER, "replay", "--direct", *select], cli_env)
    assert first.returncode == 0, first.stderr
    with psycopg.connect(db_url) as platform:  # a first correction: the slow run will want to write it
        platform.execute("UPDATE prices_daily SET close = close * 3 WHERE trade_date = %s", (days[-4],))
    holder = psycopg.connect(db_url)
    holder.execute("SELECT 1 FROM numeric_window_embeddings WHERE entity_id = 'X' FOR UPDATE")
    slow = subprocess.Popen([*EMBEDDER, "replay", "--direct", *select], env=cli_env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        with psycopg.connect(db_url, autocommit=True) as watch:
            while not watch.execute(
                """SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"""
            ).fetchone():
                assert slow.poll() is None and time.monotonic() < deadline, "the replay never waited for the lock"
                time.sleep(0.05)
        with psycopg.connect(db_url, autocommit=True) as platform:  # a second one, and the relay's round
            platform.execute("UPDATE prices_daily SET close = close * 2 WHERE trade_date = %s", (days[-5],))
        _relay_round(db_url, ("X", days[-5]))
        set_cause(holder, "correction", "prices of X")
        keys = [MaintainedKey("X", d, MODEL, 63) for d in days]
        # the correction path, in the lock holder's transaction: every key records the newer claim (5 new vectors)
        assert rewrite_keys(holder, keys).changed == 20
        holder.commit()
        assert slow.wait(60) == 0, slow.stderr.read() if slow.stderr else ""
    finally:
        holder.close()
        if slow.poll() is None:
            slow.kill()
    assert stored(db_url) == expected(db_url, ["X"], days, 63, [MODEL])
    with psycopg.connect(db_url) as conn:
        refused = conn.execute("SELECT sum(refused) FROM embedder_write_refusals WHERE writer = 'direct'").fetchone()
        assert refused[0] == len(days)  # every key: the correction path had recorded a newer claim on each


def restore(changelog: list[tuple[bytes, bytes | None]]) -> Table:
    """A table restored from changelog records in their order, as the worker's patched restore applies them
    (`streams.faust_fixes`, fix 5: `streams.window_store.fresh_records`)."""
    from streams.window_store import fresh_records

    table = Table([])
    records = [(0, k, v) for k, v in changelog]
    for k, value in fresh_records(records, lambda _p, key: table.get(key.decode())):
        table.put(changelog[k][0].decode(), value)
    return table


def read_window(table: Table, key: str):
    """A window as the worker reads it from its partition's table (the harness has one partition)."""
    from streams.partition_state import PartitionState

    return PartitionState(0, table, {}).window(key)


class Changelog(Table):
    """A state table that also appends every write to a shared changelog (one partition's topic)."""

    def __init__(self, log: list[str], records: list[tuple[bytes, bytes | None]]):
        super().__init__(log)
        self.records = records

    def put(self, key: str, value: bytes | None) -> None:
        super().put(key, value)
        self.records.append((key.encode(), value))


def test_a_frozen_workers_state_written_after_waking_never_takes_a_restored_window_back():
    """Interleaving 6, the zombie changelog: the frozen worker wakes up, processes an event it had fetched
    (from its own state, before the correction its successor applied) and writes that window to the
    changelog after the successor's newer writes. The next restore keeps the successor's window."""
    rows = history()
    last = rows[-1][1]
    windows_log: list[tuple[bytes, bytes | None]] = []
    zombie = Worker(Changelog([], windows_log))
    zombie.feed(0, RowBatch(LIVE_RUN, W, rows, stamp=stamp(1, 1)))
    successor = Worker(Changelog([], windows_log), Table([]))
    successor.windows.update(zombie.windows)
    successor.runs.update(zombie.runs)
    successor.feed(1, RowBatch(LIVE_RUN, W, [(IDS[0], last - timedelta(days=30), 44.0, 4.0)], stamp=stamp(2, 1)))
    next_day = last + timedelta(days=3)
    successor.feed(2, RowBatch(LIVE_RUN, W, [(IDS[0], next_day, 12.0, 3.0)], stamp=stamp(3, 1)))
    zombie.feed(1, RowBatch(LIVE_RUN, W, [(IDS[0], next_day - timedelta(days=1), 11.0, 3.0)], stamp=stamp(1, 2)))
    key = f"{LIVE_RUN}\x1f{IDS[0]}"
    got = read_window(restore(windows_log), key)
    want = read_window(successor.windows, key)
    assert got.applied_offset == 2 and got.rows.tobytes() == want.rows.tobytes()


def test_an_upgrade_from_the_previous_release_keeps_its_rows_and_fences_from_then_on(database_factory):
    """Rows written by the release before claims (migrations up to 0012) stay as they are (no rewrite, no claim:
    below every claim); the first write of each key by this release records one, and fences from then on."""
    from yoyo import read_migrations
    from yoyo.migrations import MigrationList

    from shared.store.migrate import MIGRATIONS_DIR, _backend, upgrade

    url = database_factory("upgrade_fencing")
    backend = _backend(url)
    previous = MigrationList([m for m in read_migrations(str(MIGRATIONS_DIR)) if m.id < "0013"])
    with backend.lock():
        backend.apply_migrations(backend.to_apply(previous))
    old, new, stale = b"\x01" * 1536, b"\x02" * 1536, b"\x03" * 1536
    with psycopg.connect(url) as conn:  # the previous release's upsert wrote it
        conn.execute(
            """INSERT INTO numeric_window_embeddings (entity_type, entity_id, window_spec, as_of_date, model_id, vector)
               VALUES ('INSTRUMENT', 'X', '{"window_days": 63, "entity_type": "INSTRUMENT"}', %s, %s, %s)""",
            (D, MODEL, old),
        )
    assert upgrade(url).applied[0] == "0013_write_fencing"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT computed_from, vector FROM numeric_window_embeddings").fetchone() == (None, old)
        assert write_embeddings(conn, [("X", D, MODEL, 63, new)], claim=stamp(3, 1)).changed == 1
        assert write_embeddings(conn, [("X", D, MODEL, 63, stale)], claim=stamp(2, 9)).refused == 1
        conn.commit()
        assert conn.execute("SELECT computed_from, vector FROM numeric_window_embeddings").fetchone() == (
            stamp(3, 1),
            new,
        )
