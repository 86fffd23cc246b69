"""Where a live tick's time goes: a synthetic market of N instruments (as `make bench`'s scale part),
a worker bootstrapped on it, then days landing with INSERTs and `tick`s while py-spy samples the worker
(every thread). Prints the ticks' latencies, the CPU seconds of each process kind during them, and the
top frames (own time and including callees, per thread); writes them to
bench-results/profile-ticks-<label>.txt with the collapsed stacks beside it.

Run: `.venv/bin/python -m benchmarks.profile_ticks --instruments 5000 --label before` (needs py-spy, as for
benchmarks.profile_stream).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections import Counter
from datetime import date
from pathlib import Path

import psycopg

from backfill.synthetic import synthetic_rows
from benchmarks.bench import MODEL, for_app, fresh_database
from benchmarks.live import (
    load_quietly,
    start_worker,
    stop,
    tick_latencies,
    wait_bootstrapped,
    wait_ready,
    withhold_days,
)
from benchmarks.proc_cpu import cpu_seconds
from benchmarks.profile_stream import OUT, start_py_spy, top_frames, write_report
from shared.contract.config import Settings
from shared.store.migrate import upgrade


def tick_stages(url: str) -> list[tuple]:
    """Per live tick: seconds from its outbox entry to the publication of the day's rows and of the
    tick, and to the first and last partition's commit."""
    with psycopg.connect(url) as conn:
        return conn.execute("""
            SELECT t.trade_date,
                   extract(epoch FROM (SELECT max(k.published_at) FROM prices_outbox k
                                       WHERE k.kind = 'keys' AND k.id < t.id AND t.trade_date = ANY(k.trade_dates))
                                      - t.created_at),
                   extract(epoch FROM t.published_at - t.created_at),
                   extract(epoch FROM min(c.committed_at) - t.created_at),
                   extract(epoch FROM max(c.committed_at) - t.created_at)
            FROM prices_outbox t JOIN embedder_tick_commits c ON c.run_id = 'live' AND c.as_of_date = t.trade_date
            WHERE t.kind = 'tick' GROUP BY t.id ORDER BY t.trade_date""").fetchall()[1:]


def statements_reset(url: str) -> bool:
    """Start counting PostgreSQL's statements (pg_stat_statements, where the server preloads it); False where not."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
        return True
    except psycopg.Error:
        return False


def top_statements(url: str, instrument_ticks: int, n: int = 25) -> list[str]:
    """The statements that took PostgreSQL's time since `statements_reset` (nested ones too, where the server
    tracks them: trigger bodies), per instrument-tick: where its CPU goes, statement by statement."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """SELECT total_exec_time, calls, rows, toplevel, left(regexp_replace(query, '\\s+', ' ', 'g'), 120)
               FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
               ORDER BY total_exec_time DESC LIMIT %s""",
            (n,),
        ).fetchall()
    return [
        f"  {ms / instrument_ticks:7.4f} ms  {calls:7d} calls {returned:9d} rows  {'' if top else '(nested) '}{q}"
        for ms, calls, returned, top, q in rows
    ]


WAITS = ("EpollSelector.select", "Connection.wait", "Condition.wait", "Event.wait", "sleep (", "Queue.get")


def busy_by_thread(collapsed: Path) -> Counter:
    """py-spy samples per thread name whose innermost frame is not a wait (select, a lock, a socket read):
    each thread's share of the worker's CPU, approximately."""
    busy: Counter = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if len(frames) < 2 or any(frames[-1].startswith(w) for w in WAITS):
            continue
        busy[frames[0].split(": ", 1)[-1]] += int(count)
    return busy


def per_instrument_tick(cpu: Counter, busy: Counter, instrument_ticks: int) -> str:
    """Issue 28's figure: CPU milliseconds per instrument and tick, of the worker (its relay thread apart)
    and of PostgreSQL."""
    total = sum(busy.values()) or 1
    relay = cpu["worker"] * busy["outbox-relay"] / total
    ms = lambda seconds: 1000 * seconds / instrument_ticks  # noqa: E731
    return (
        f"CPU per instrument-tick: worker {ms(cpu['worker'] - relay):.3f} ms (goal 0.06) + its relay thread "
        f"{ms(relay):.3f} ms (goal 0.015; the thread's share of the worker's busy samples), "
        f"PostgreSQL {ms(cpu['postgres']):.3f} ms (goal 0.03)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instruments", type=int, default=5000)
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--label", default="now")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    args = parser.parse_args()
    base = Settings()
    url = fresh_database(base.database_url)
    upgrade(url)
    rows = [
        (s, date.fromisoformat(d), float(c), float(v))
        for d, _h, _l, _o, c, v, _a, s in synthetic_rows(
            args.instruments, date(2019, 1, 1), date(2019, 12, 31), long_ids=True
        )
    ]
    load_quietly(url, rows, "SCALE")
    days = sorted({r[1] for r in rows})[-args.ticks - 1 :]
    del rows
    settings = for_app(base, url, uuid.uuid4().hex[:8])
    withhold_days(url, days[0])
    workdir = Path(tempfile.mkdtemp(prefix="embedder-profile-"))
    worker = start_worker(settings, workdir / "w")
    raw = OUT / f"profile-ticks-{args.label}.collapsed"
    try:
        wait_ready(workdir / "w", timeout=600, proc=worker)
        wait_bootstrapped(settings, url)
        tick_latencies(settings, url, days[:1], MODEL)  # the first day after the bootstrap, unmeasured
        spy_proc = start_py_spy(worker.pid, args.rate, raw, "--threads")
        time.sleep(1.0)
        counting = statements_reset(url)
        before = cpu_seconds()
        between_days: Counter = Counter()
        latencies = tick_latencies(settings, url, days[1:], MODEL, between_days)
        cpu = cpu_seconds()
        cpu.subtract(before)
        cpu.subtract(between_days)
        statements = top_statements(url, len(days[1:]) * args.instruments) if counting else []
        spy_proc.send_signal(2)
        spy_proc.wait(timeout=60)
        stages = tick_stages(url)
    finally:
        stop(worker)
        with psycopg.connect(base.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    own, inclusive, samples = top_frames(raw, 40)
    wall = sum(latencies)
    write_report(
        OUT / f"profile-ticks-{args.label}.txt",
        [
            f"{len(latencies)} live ticks of {args.instruments} instruments: p50 {statistics.median(latencies):.3f} s, "
            f"max {max(latencies):.3f} s, {wall:.1f} s in all; {samples} py-spy samples of the worker at {args.rate}/s",
            "CPU seconds during the ticks (2 cores: at most twice the wall time): "
            + ", ".join(f"{k} {v:.1f}" for k, v in cpu.most_common()),
            per_instrument_tick(cpu, busy_by_thread(raw), len(latencies) * args.instruments),
            "",
            "stages of each tick, seconds from its entry in the outbox: the relay published the day's rows, "
            "then the tick; the first and the last partition committed",
            *[
                f"  {d}: rows {a:.3f}  tick {b:.3f}  first commit {c:.3f}  last commit {e:.3f}"
                for d, a, b, c, e in stages
            ],
            "",
            *(
                ["PostgreSQL's statements by execution time per instrument-tick (pg_stat_statements)", *statements, ""]
                if statements
                else ["(pg_stat_statements is not preloaded here: no statement breakdown)", ""]
            ),
        ],
        own,
        inclusive,
    )


if __name__ == "__main__":
    main()
