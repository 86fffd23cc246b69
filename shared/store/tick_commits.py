"""When a run through the stream is complete: read from `embedder_tick_commits`, which the sink writes
in the same transaction as the embeddings (no Kafka needed to follow a run)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import psycopg

from shared.contract.errors import EmbedderError
from shared.store.db import connection, one

if TYPE_CHECKING:
    from shared.broker.lag import GroupLag, LagMonitor


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
