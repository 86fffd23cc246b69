"""`embedder_runs` and `embedder_tick_commits`: every statement on them. A run through the stream is recorded
(`start_run`, `set_target_offsets`, `complete_run`); the sink records each tick it commits in the same
transaction as the embeddings (`record_tick_commits`); and a run's completion is read from them
(`wait_for_run`: no Kafka needed to follow a run)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING

import psycopg
from psycopg.types.json import Jsonb

from shared.contract.errors import EmbedderError
from shared.contract.messages import LIVE_RUN
from shared.store.db import connection, one

if TYPE_CHECKING:
    from shared.broker.lag import GroupLag, LagMonitor


def start_run(conn: psycopg.Connection, run_id: str, start_offsets: dict[int, int] | None = None) -> None:
    """Record a run (a replay with the prices topic's end offsets when it began, or a live query)."""
    conn.execute(
        "INSERT INTO embedder_runs (run_id, start_offsets) VALUES (%s, %s)",
        (run_id, Jsonb(start_offsets) if start_offsets is not None else None),
    )


def set_target_offsets(conn: psycopg.Connection, run_id: str, target_offsets: dict[int, int]) -> None:
    """The prices topic's end offsets once the run's messages are all published: what it must reach."""
    conn.execute("UPDATE embedder_runs SET target_offsets = %s WHERE run_id = %s", (Jsonb(target_offsets), run_id))


def complete_run(conn: psycopg.Connection, run_id: str) -> None:
    """The run is over: its re-delivered messages are stale from now on (`completed_runs`)."""
    conn.execute("UPDATE embedder_runs SET completed_at = now() WHERE run_id = %s", (run_id,))


def completed_runs(conn: psycopg.Connection, run_ids: list[str]) -> set[str]:
    """Those of `run_ids` that completed."""
    return {
        r[0]
        for r in conn.execute(
            "SELECT run_id FROM embedder_runs WHERE run_id = ANY(%s) AND completed_at IS NOT NULL", (run_ids,)
        )
    }


def recent_runs(conn: psycopg.Connection) -> list[tuple]:
    """Runs still going or completed in the last 10 minutes, newest first (at most 20):
    (run_id, started_at, completed_at, start_offsets, target_offsets)."""
    return conn.execute(
        """SELECT run_id, started_at, completed_at, start_offsets, target_offsets FROM embedder_runs
           WHERE completed_at IS NULL OR completed_at > now() - interval '10 minutes'
           ORDER BY started_at DESC LIMIT 20"""
    ).fetchall()


TICK_COMMIT_FIELDS = ("run", "scope", "p", "d", "e", "i", "m", "x")


def record_tick_commits(cur: psycopg.Cursor, done: list[dict]) -> None:
    """Record ticks committed by the sink, in its transaction (`cur`): one dict per (run, scope, source
    partition, day) with keys run, scope, p, d, e (embeddings), i (insufficient), m (missing today),
    x (rows missing) and again (a re-delivery: counts only grow, never shrink).

    One statement for first deliveries and one for re-deliveries, not one per dict (a whole replay records
    10,000: the sink and PostgreSQL spent ~0.3 CPU-s on the statements); a key given twice is merged first as
    two statements in a row would leave it (`merged_tick_commits`)."""
    merged = merged_tick_commits(done)
    for again in (False, True):
        rows = [r for r in merged if bool(r["again"]) is again]
        if not rows:
            continue
        embeddings, insufficient = (
            ("GREATEST(c.embeddings, EXCLUDED.embeddings)", "LEAST(c.insufficient, EXCLUDED.insufficient)")
            if again
            else ("EXCLUDED.embeddings", "EXCLUDED.insufficient")
        )
        cur.execute(
            f"""INSERT INTO embedder_tick_commits AS c (run_id, scope, source_partition, as_of_date,
                    embeddings, insufficient, missing_today, rows_missing)
               SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::date[], %s::int[], %s::int[], %s::int[],
                                    %s::int[])
               ON CONFLICT (run_id, scope, source_partition, as_of_date) DO UPDATE SET
                   embeddings = {embeddings}, insufficient = {insufficient},
                   missing_today = EXCLUDED.missing_today,
                   rows_missing = EXCLUDED.rows_missing, committed_at = now()""",
            [[r[f] for r in rows] for f in TICK_COMMIT_FIELDS],
        )


def merged_tick_commits(done: list[dict]) -> list[dict]:
    """`done` with one dict per key (run, scope, p, d): what recording them one after another leaves. A later
    first delivery replaces what came before; a later re-delivery keeps the higher embeddings and the lower
    insufficient count of the two, and the earlier one's flag (whether the stored row is compared)."""
    by_key: dict[tuple, dict] = {}
    for r in done:
        key = (r["run"], r["scope"], r["p"], r["d"])
        before = by_key.get(key)
        if before is None or not r["again"]:
            by_key[key] = r
        else:
            by_key[key] = r | {
                "e": max(before["e"], r["e"]),
                "i": min(before["i"], r["i"]),
                "again": before["again"],
            }
    return list(by_key.values())


def forget_live_ticks(conn: psycopg.Connection, days: list[date]) -> None:
    """Drop the live run's tick commits of `days` (their ticks are queued again)."""
    conn.execute("DELETE FROM embedder_tick_commits WHERE run_id = 'live' AND as_of_date = ANY(%s)", (days,))


def newest_live_ticks(conn: psycopg.Connection) -> list[dict]:
    """The newest live tick of each scope (market, or `*`), summed over its source partitions."""
    rows = conn.execute(
        """SELECT c.scope, c.as_of_date, count(*), sum(c.embeddings), sum(c.insufficient), sum(c.missing_today),
                  max(c.committed_at)
           FROM embedder_tick_commits c
           JOIN (SELECT scope, max(as_of_date) AS d FROM embedder_tick_commits WHERE run_id = %s GROUP BY scope) n
             ON n.scope = c.scope AND n.d = c.as_of_date
           WHERE c.run_id = %s GROUP BY c.scope, c.as_of_date ORDER BY c.scope""",
        (LIVE_RUN, LIVE_RUN),
    ).fetchall()
    return [
        {
            "market": scope,
            "as_of": d.isoformat(),
            "partitions": int(parts),
            "embedded": int(e),
            "insufficient_history": int(i),
            "missing_today": int(m),
            "committed_at": at.isoformat(timespec="seconds"),
        }
        for scope, d, parts, e, i, m, at in rows
    ]


def days_ticked_since(conn: psycopg.Connection, since: datetime, limit: int) -> list[date]:
    """Up to `limit` as_of dates whose ticks (of any run) committed since `since`."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT as_of_date FROM embedder_tick_commits WHERE committed_at >= %s LIMIT %s", (since, limit)
        )
    ]


def newest_day_committed_everywhere(conn: psycopg.Connection, market_id: str, partitions: int) -> date | None:
    """The newest day whose live tick of the market (or of every market) committed on `partitions` partitions."""
    return one(
        conn.execute(
            """SELECT max(as_of_date) FROM (SELECT as_of_date FROM embedder_tick_commits
                                        WHERE run_id = 'live' AND scope IN (%s, '*')
                                        GROUP BY as_of_date, scope HAVING count(*) >= %s) done""",
            (market_id, partitions),
        )
    )[0]


@dataclass
class StreamResult:
    run_id: str
    instruments: int = 0
    as_of_dates: int = 0
    rows_published: int = 0
    embeddings: int = 0
    answered_live: bool = False
    """True when the live run's windows answered it (nothing was republished)."""
    answered_from_database: bool = False
    """True when the live worker answered it from look-backs it read from prices_daily."""


@dataclass
class ReplayHooks:
    """Progress callbacks (all optional)."""

    on_start: Callable[[int, int, int], None] | None = None  # instruments, as_of dates, ticks expected
    on_published: Callable[[int], None] | None = None  # rows just published
    on_committed: Callable[[int, int], None] | None = None  # ticks committed, embeddings committed
    on_lag: Callable[[GroupLag], None] | None = None  # the worker group's lag, every few seconds


def wait_for_run(
    database_url: str,
    run_id: str,
    last_tick: date,
    partitions: int,
    hooks: ReplayHooks,
    timeout: float | None = None,
    poll: float = 0.1,
    lag: LagMonitor | None = None,
    lag_every: float = 2.0,
    expected_ticks: int | None = None,
    settle: float = 60.0,
) -> int:
    """Block until every partition has committed `last_tick`; returns embeddings committed.

    With `expected_ticks` (as_of dates x partitions), a run whose last tick is in while an earlier
    one never arrives fails after `settle` seconds without progress, naming the missing tick:
    a lost tick would otherwise leave a silent hole of embeddings. (Long enough to ride out a broker
    restart, during which a retried earlier tick can land after the last one.)
    With `lag` and `hooks.on_lag`, the worker group's lag is reported every `lag_every` seconds, the first
    time `lag_every` seconds in.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    next_lag = time.monotonic() + lag_every  # a run done sooner never pays for a lag reading (~0.15 s)
    stalled_since: float | None = None
    last_count = -1
    with connection(database_url, autocommit=True) as conn:
        while True:
            if lag is not None and hooks.on_lag and time.monotonic() >= next_lag:
                hooks.on_lag(lag.sample().groups[0])
                next_lag = time.monotonic() + lag_every
            ticks, embeddings, last, missing = one(
                conn.execute(
                    """SELECT count(*), coalesce(sum(embeddings), 0),
                          count(*) FILTER (WHERE as_of_date = %s), coalesce(max(rows_missing), 0)
                   FROM embedder_tick_commits WHERE run_id = %s""",
                    (last_tick, run_id),
                )
            )
            if missing:
                raise EmbedderError(lost_rows_message(conn, run_id))
            if hooks.on_committed:
                hooks.on_committed(int(ticks), int(embeddings))
            if last >= partitions:
                if expected_ticks is None or ticks >= expected_ticks:
                    return int(embeddings)
                if ticks != last_count:
                    stalled_since, last_count = time.monotonic(), ticks
                elif stalled_since is not None and time.monotonic() - stalled_since > settle:
                    raise EmbedderError(lost_ticks_message(conn, run_id, expected_ticks - ticks, partitions))
            if deadline is not None and time.monotonic() > deadline:
                raise EmbedderError(f"replay {run_id} not complete after {timeout:.0f}s")
            time.sleep(poll)


def lost_ticks_message(conn: psycopg.Connection, run_id: str, lost: int, partitions: int) -> str:
    partition, as_of = conn.execute(
        """SELECT p, d FROM (SELECT DISTINCT as_of_date AS d FROM embedder_tick_commits WHERE run_id = %s) dates
           CROSS JOIN generate_series(0, %s - 1) AS p
           WHERE NOT EXISTS (SELECT 1 FROM embedder_tick_commits c
                             WHERE c.run_id = %s AND c.as_of_date = d AND c.source_partition = p)
           ORDER BY d, p LIMIT 1""",
        (run_id, partitions, run_id),
    ).fetchone() or (None, None)
    where = f" (first: the tick of {as_of} on partition {partition})" if as_of else ""
    return (
        f"replay {run_id}: {lost} tick(s) never committed{where} although the last one was; "
        "their embeddings are missing. Run the replay again."
    )


def lost_rows_message(conn: psycopg.Connection, run_id: str) -> str:
    partition, as_of, missing = one(
        conn.execute(
            """SELECT source_partition, as_of_date, rows_missing FROM embedder_tick_commits
           WHERE run_id = %s AND rows_missing > 0 ORDER BY as_of_date, source_partition LIMIT 1""",
            (run_id,),
        )
    )
    return (
        f"replay {run_id}: partition {partition} of the prices topic did not deliver {missing} row(s) "
        f"published before the tick of {as_of}; its embeddings are incomplete. Run the replay again."
    )
