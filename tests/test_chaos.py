"""The project's own chaos run (issue 26): seeded, bounded, two live workers on the local 3-node cluster.

The platform writes new days with plain SQL (in one transaction or row by row), corrects old closes (months
before the live windows: the correction path) and recent ones (inside them: the stream), deletes a recent
row and puts it back, and ticks each day — while, overlapping those writes, a worker is frozen with
SIGSTOP past its session timeout (its partitions move, then it wakes up holding what it had), a broker is
frozen, PostgreSQL crashes and restarts (every session dropped: the relay's and the correction path's
locks move to the other worker) and another worker is frozen. At the end the whole table — every stored
key and every key recorded absent — equals the plain-loop reference over the prices as they are, byte
for byte, and `embedder verify` agrees.

The seed is printed; `CHAOS_SEED=<n>` replays a schedule.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.support.cli import run
from tests.support.helpers import assert_same_embeddings, load_synthetic, wait_for
from tests.support.markets import MODELS
from tests.support.platform import insert_prices
from tests.support.whole_table import exact, whole_table
from tests.support.workers import group_members, live_tick_committed, start_named_worker, stop

FREEZE_SECONDS = 16.0  # past the workers' 10 s session timeout
DAYS = 6


def freeze(pid: int, seconds: float) -> threading.Thread:
    """SIGSTOP `pid` now and SIGCONT it `seconds` later (in a thread, so the run goes on meanwhile)."""
    os.kill(pid, signal.SIGSTOP)

    def wake() -> None:
        time.sleep(seconds)
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    thread = threading.Thread(target=wake, daemon=True)
    thread.start()
    return thread


def relay_pid(url: str) -> int | None:
    """The process id of the worker holding the relay lock (its application name ends with host:pid)."""
    from live.relay import relay_holder

    with psycopg.connect(url) as conn:
        holder = relay_holder(conn)
    return int(holder.application.rsplit(":", 1)[1]) if holder else None


def crash_postgres(url: str) -> None:
    """A backend killed -9: the postmaster ends every session and recovers (what a crash of the server does to
    its clients), so advisory locks (the relay's, the correction path's) are released."""
    conn = psycopg.connect(url, autocommit=True)
    pids = [
        r[0]
        for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    ]
    try:
        os.kill(pids[0], signal.SIGKILL)
    except (PermissionError, IndexError):  # not the server's user: end the sessions instead
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    conn.close()
    # Until the postmaster notices its child died, new connections still succeed: wait until every session of
    # before is gone (the crash recovery ended them all), not merely until a connection answers.
    wait_for(lambda: _answers_without(url, set(pids)), 60, "PostgreSQL to recover and accept connections again")


def _answers_without(url: str, sessions: set[int]) -> bool:
    """PostgreSQL accepts connections and none of `sessions` is alive any more."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            alive = {r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity")}
        return not (alive & sessions)
    except psycopg.Error:
        return False


def with_retry(what, attempts: int = 30):
    """Run a platform write (or command) again while PostgreSQL recovers from the crash."""
    for k in range(attempts):
        try:
            return what()
        except psycopg.OperationalError:
            if k == attempts - 1:
                raise
            time.sleep(1)


def tick(env: dict[str, str], day: date) -> None:
    args = ["tick", "--as-of", day.isoformat(), *[a for m in MODELS for a in ("--model-id", m)]]
    for _ in range(30):
        done = run(env, *args, ok=False)
        if done.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"embedder tick {day} kept failing: {done.stderr[-2000:]}")


def test_exact_through_frozen_workers_a_frozen_broker_and_a_postgres_crash(
    cluster_env, kafka_cluster, tmp_path: Path, capsys: pytest.CaptureFixture
):
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1_000_000))
    rng = random.Random(seed)
    env = cluster_env | {"EMBEDDER_PARITY_AUDIT_SECONDS": "10"}
    url = env["DATABASE_URL"]
    load_synthetic(url, tmp_path, instruments=30, start=date(2018, 1, 1), end=date(2019, 12, 31), seed=seed % 97)
    with psycopg.connect(url) as conn:
        days = [
            r[0] for r in conn.execute("SELECT DISTINCT trade_date FROM prices_daily ORDER BY 1 DESC LIMIT %s", (DAYS,))
        ]
        days.reverse()
        held = conn.execute(
            "DELETE FROM prices_daily WHERE trade_date >= %s RETURNING instrument_id, trade_date, close, volume",
            (days[0],),
        ).fetchall()
    old_from, old_to = date(2018, 7, 1), date(2018, 12, 31)
    run(env, "replay", "--direct", "--from", str(old_from), "--to", str(old_to), "--market-id", "US_EQ",
        "--model-id", MODELS[1])  # fmt: skip
    # At info, a worker's log holds faust's recovery tables (highwaters, where each restore started): shown
    # on a failure, they say which state a worker computed from.
    workers = {name: start_named_worker(env, tmp_path, name, capture=True, loglevel="info") for name in ("w1", "w2")}
    faults: list[str] = []
    threads: list[threading.Thread] = []
    try:
        wait_for(lambda: group_members(env) == 2, 180, "both workers in the group")

        def loaded() -> bool:
            with psycopg.connect(url) as conn:
                done, queued = conn.execute("SELECT count(published_at), count(*) FROM embedder_bootstrap").fetchone()
            return queued > 0 and done == queued

        wait_for(loaded, 180, "the live bootstrap")
        removed: tuple | None = None
        for k, day in enumerate(days):
            # the fault of the day, overlapping its writes
            if k in (1, 5):  # first the worker relaying the outbox, then the other one
                relaying = relay_pid(url)
                name = next((n for n, w in workers.items() if (w.pid == relaying) == (k == 1)), "w1")
                threads.append(freeze(workers[name].pid, FREEZE_SECONDS))
                faults.append(f"day {k}: {name}{' (relaying)' if workers[name].pid == relaying else ''} frozen")
            elif k == 3:
                node = rng.choice([n.node_id for n in kafka_cluster.nodes])
                pid = kafka_cluster.node(node).running_pid()
                assert pid
                threads.append(freeze(pid, 12.0))
                faults.append(f"day {k}: broker {node} frozen 12 s")
            elif k == 4:
                crash_postgres(url)
                faults.append(f"day {k}: PostgreSQL crashed")
            with psycopg.connect(url) as conn:  # corrections of old closes (the correction path) and recent ones
                old = conn.execute(
                    "SELECT instrument_id, trade_date FROM prices_daily WHERE trade_date BETWEEN %s AND %s "
                    "ORDER BY random() LIMIT 6",
                    (old_from + timedelta(days=20), old_to),
                ).fetchall()
                recent = conn.execute(
                    "SELECT instrument_id, trade_date FROM prices_daily WHERE trade_date >= %s "
                    "ORDER BY random() LIMIT 3",
                    (days[0] - timedelta(days=40),),
                ).fetchall()
            for i, d in old + recent:
                factor = rng.choice([0.9, 0.97, 1.03, 1.1])
                with_retry(lambda i=i, d=d, f=factor: _update_close(url, i, d, f))
            rows = [r for r in held if r[1] == day]
            if k % 2:
                with_retry(lambda rows=rows: _insert(url, rows))
            else:
                for row in rows:
                    with_retry(lambda row=row: _insert(url, [row]))
            if k == 2:  # a recent row deleted...
                with psycopg.connect(url) as conn:
                    removed = conn.execute(
                        "DELETE FROM prices_daily WHERE (instrument_id, trade_date) IN (SELECT instrument_id, "
                        "trade_date FROM prices_daily WHERE trade_date = %s ORDER BY random() LIMIT 1) "
                        "RETURNING instrument_id, trade_date, close, volume",
                        (days[1],),
                    ).fetchone()
            if k == DAYS - 1 and removed:  # ...and put back
                with_retry(lambda row=removed: _insert(url, [row]))
            tick(env, day)
        for thread in threads:
            thread.join()
        partitions = int(env["EMBEDDER_PARTITIONS"])
        wait_for(lambda: all(live_tick_committed(url, d, partitions) for d in days), 300, "every live tick")
        try:
            wait_for(lambda: exact(url), 120, "the whole table to equal the reference")
        except AssertionError:
            got, want = whole_table(url)
            assert_same_embeddings(got, want, url)  # names what differs
            raise
        verify = run(env, "verify", "--json", ok=False)
        assert verify.returncode == 0, verify.stdout[-3000:]
        assert json.loads(verify.stdout)["equal"]
        assert all(w.poll() is None for w in workers.values())
    except BaseException as e:
        _show_logs(tmp_path, workers)
        raise AssertionError(f"chaos seed {seed} ({'; '.join(faults)}): {e}") from e
    finally:
        for w in workers.values():
            try:
                os.kill(w.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            stop(w)
        for node in kafka_cluster.nodes:
            pid = node.running_pid()
            if pid:
                os.kill(pid, signal.SIGCONT)
            else:
                kafka_cluster.start(node.node_id)
    with psycopg.connect(url) as conn:
        audited = conn.execute("SELECT coalesce(sum(mismatches), 0) FROM embedder_parity_audits").fetchone()[0]
        examples = conn.execute(
            "SELECT checked_at, source, examples FROM embedder_parity_audits WHERE mismatches > 0 ORDER BY checked_at"
        ).fetchall()
        refused = conn.execute("SELECT coalesce(sum(refused), 0) FROM embedder_write_refusals").fetchone()[0]
    said = f"chaos seed {seed}: {'; '.join(faults)}; audit mismatches {audited}; writes refused {refused}"
    with capsys.disabled():  # shown in a quiet run too, so every run's seed and faults are on record
        print(f"\n{said}")
    for checked_at, source, found in examples:
        print(f"  audit {checked_at:%H:%M:%S} ({source}): {found}")
    if audited:
        _show_logs(tmp_path, workers)
    assert audited == 0, f"chaos seed {seed}: the audit had to repair {audited} key(s): {examples}"


def _show_logs(tmp_path: Path, workers: dict) -> None:
    """Print the workers' logs (a failed chaos run is rare: its logs are the whole record of it)."""
    for name in workers:
        log = tmp_path / f"{name}.log"
        if log.exists():
            print(f"\n===== {name}.log =====\n{log.read_text(errors='replace')[-200_000:]}")


def _update_close(url: str, instrument_id: str, day: date, factor: float) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE prices_daily SET close = close * %s WHERE instrument_id = %s AND trade_date = %s",
            (factor, instrument_id, day),
        )


def _insert(url: str, rows: list[tuple]) -> None:
    try:
        with psycopg.connect(url) as conn, conn.transaction():
            insert_prices(conn, rows)
    except psycopg.errors.UniqueViolation:  # a retry of a commit whose answer the crash lost
        pass
