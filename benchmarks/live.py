"""The always-on service, measured as a user starts it: history in prices_daily that no trigger saw, a
worker that bootstraps it, then day after day of rows landing with plain INSERTs, each followed by
`embedder tick`; latency from the tick to the last commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import date
from pathlib import Path

import psycopg

from backfill.worker_process import wait_caught_up as caught_up
from backfill.worker_process import worker_env
from benchmarks.proc_cpu import cpu_seconds, pid_cpu_seconds
from live.bootstrap import enqueue_tick
from shared.contract.config import Settings


def start_worker(settings: Settings, datadir: Path, capture: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "embedder.cli", "worker", "--data-dir", str(datadir)]
    if not capture:
        cmd.append("--no-capture")
    return subprocess.Popen(
        cmd,
        env=worker_env(settings) | {"EMBEDDER_OUTBOX_POLL_SECONDS": "0.05"},
        stdout=open(datadir.parent / f"{datadir.name}.log", "ab"),
        stderr=subprocess.STDOUT,
    )


def wait_ready(datadir: Path, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> float:
    """Seconds until the worker's /readyz answers 200 (an error at once if `proc` exits meanwhile)."""
    started = time.perf_counter()
    port_file = datadir / "web.port"
    while time.perf_counter() - started < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"the worker exited with {proc.returncode} (its log: {datadir.parent / datadir.name}.log)"
            )
        if port_file.exists():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port_file.read_text().strip()}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"worker not ready after {timeout:.0f}s")


def wait_caught_up(settings: Settings, timeout: float = 600.0) -> None:
    if not caught_up(settings, timeout):
        raise RuntimeError("the worker did not catch up")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def withhold_days(url: str, first: date) -> int:
    """Take the rows from `first` on out of prices_daily, unseen by the capture triggers (history the
    platform wrote before the project was installed ends before them); returns how many."""
    with psycopg.connect(url) as conn:
        conn.execute("SET session_replication_role = replica")  # no capture triggers for this session
        conn.execute("DROP TABLE IF EXISTS bench_withheld")
        conn.execute("CREATE TABLE bench_withheld AS SELECT * FROM prices_daily WHERE trade_date >= %s", (first,))
        n = conn.execute("DELETE FROM prices_daily WHERE trade_date >= %s", (first,)).rowcount
        conn.execute("""TRUNCATE prices_outbox, embedder_bootstrap, embedder_tick_commits, embedder_scheduled_ticks,
                        embedder_recompute_queue""")
        # Their embeddings are the live service's to compute: keys stored ahead of the rows would make
        # every landing day a correction of them (recomputed by the database path, as it should).
        conn.execute("DELETE FROM numeric_window_embeddings WHERE as_of_date >= %s", (first,))
        conn.execute("DELETE FROM embedder_absent_embeddings WHERE as_of_date >= %s", (first,))
    return n


def wait_bootstrapped(settings: Settings, url: str, timeout: float = 1800.0) -> int:
    """Block until every queued instrument is loaded and the worker has applied it; returns rows."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            queued, loaded, rows = conn.execute(
                "SELECT count(*), count(published_at), coalesce(sum(rows), 0) FROM embedder_bootstrap"
            ).fetchone()
            if queued and queued == loaded:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"bootstrap not done after {timeout:.0f}s ({loaded} of {queued})")
            time.sleep(0.1)
    wait_caught_up(settings, timeout)
    return int(rows)


GROWING_TABLES = ("numeric_window_embeddings", "embedder_absent_embeddings", "embedder_tick_commits")
"""The tables a live day adds rows to (prices_daily too, but its history dwarfs a day's rows)."""


def analyze_as_autovacuum_would(conn: psycopg.Connection) -> float:
    """What the hours between two trading days do to the tables' statistics: autovacuum analyzes a table
    whose rows changed by more than its threshold (50 rows + 10 %) within a minute. A benchmark ticks days
    seconds apart, before autovacuum's next round, so a table that starts empty was planned all along with
    no column statistics (every equality taken as 0.5 % selective): the sink's key joins ran as nested
    loops over every stored row, up to a second a tick, which no deployment ticking once a day sees.
    Returns the CPU-seconds this connection's server process spent on it."""
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    before = pid_cpu_seconds(backend)
    for table in GROWING_TABLES:
        analyzed, rows = conn.execute(
            f"SELECT greatest(reltuples, 0), (SELECT count(*) FROM {table}) FROM pg_class WHERE oid = %s::regclass",
            (table,),
        ).fetchone()
        if abs(rows - analyzed) > 50 + 0.1 * analyzed:
            conn.execute(f"ANALYZE {table}")
    return pid_cpu_seconds(backend) - before


def tick_latencies(
    settings: Settings,
    url: str,
    days: list[date],
    model_id: str,
    between_days: Counter | None = None,
    cpu_per_day: list[Counter] | None = None,
) -> list[float]:
    """For each day: its rows land in prices_daily with a plain INSERT (captured by the triggers),
    then `embedder tick`; seconds from the tick to the commit of its last partition. After each day the
    tables are analyzed as autovacuum would have by the next (`analyze_as_autovacuum_would`); the CPU that
    takes PostgreSQL is added to `between_days`, for the caller to leave out of the ticks' figures.
    `cpu_per_day`: each day's CPU-seconds by process kind, from its INSERT to its last commit."""
    latencies = []
    with psycopg.connect(url, autocommit=True) as conn:
        for day in days:
            before = cpu_seconds() if cpu_per_day is not None else Counter()
            conn.execute("INSERT INTO prices_daily SELECT * FROM bench_withheld WHERE trade_date = %s", (day,))
            started = time.perf_counter()
            enqueue_tick(conn, day, settings.window_days, [model_id])
            while (
                conn.execute(
                    """SELECT count(*) FROM embedder_tick_commits
                                  WHERE run_id = 'live' AND as_of_date = %s""",
                    (day,),
                ).fetchone()[0]
                < settings.partitions
            ):
                time.sleep(0.005)
            latencies.append(time.perf_counter() - started)
            if cpu_per_day is not None:
                cpu_per_day.append(cpu_seconds() - before)
            analyzing = analyze_as_autovacuum_would(conn)
            if between_days is not None:
                between_days["postgres"] += analyzing
    return latencies


def load_quietly(url: str, rows: list[tuple], market_id: str) -> None:
    """A synthetic market as a platform holds it: instruments and prices written with the capture
    triggers off (the history predates the project). rows: (id, date, close, volume)."""
    from shared.store.db import copy_rows

    with psycopg.connect(url) as conn:
        conn.execute("SET session_replication_role = replica")
        with conn.cursor() as cur:
            copy_rows(
                cur,
                "instruments",
                ("instrument_id", "market_id", "asset_class", "symbol", "currency"),
                [(i, market_id, "EQUITY", i, "USD") for i in sorted({r[0] for r in rows})],
            )
            copy_rows(
                cur,
                "prices_daily",
                ("instrument_id", "trade_date", "open", "high", "low", "close", "adjusted_close", "volume", "currency"),
                ((i, d, c, c, c, c, c, v, "USD") for i, d, c, v in rows),
                ("text", "date", "float8", "float8", "float8", "float8", "float8", "float8", "text"),
            )
    # A platform's history was loaded long ago: vacuumed and analysed. Without this, autovacuum's first pass
    # over the fresh million rows lands in the middle of the timed ticks (10 of 20 ticks 2-4x slower).
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE instruments, prices_daily")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
