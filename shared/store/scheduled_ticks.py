"""`embedder_scheduled_ticks`: every statement on it. One row per market and day the tick schedule queued
(`live.schedule`), and a market's baseline (the newest day present when the schedule first saw it: it never
ticks history); a row names the outbox entry of its tick, kept right when the outbox renumbers ticks."""

from __future__ import annotations

from datetime import date

import psycopg

from shared.store.db import one


def bounds(conn: psycopg.Connection, market_id: str) -> tuple[date | None, date | None]:
    """(the market's baseline, its newest scheduled day); None where there is none yet."""
    baseline, newest = one(
        conn.execute(
            """SELECT max(as_of_date) FILTER (WHERE reason = 'baseline'), max(as_of_date)
           FROM embedder_scheduled_ticks WHERE market_id = %s""",
            (market_id,),
        )
    )
    return baseline, newest


def record_baseline(conn: psycopg.Connection, market_id: str, day: date) -> None:
    """The market's schedule starts after `day` (kept if one was recorded meanwhile)."""
    conn.execute(
        """INSERT INTO embedder_scheduled_ticks (market_id, as_of_date, reason) VALUES (%s, %s, 'baseline')
                    ON CONFLICT DO NOTHING""",
        (market_id, day),
    )


def record_tick(
    conn: psycopg.Connection, market_id: str, day: date, reason: str, present: int, expected: int, outbox_id: int
) -> None:
    """A scheduled tick queued as outbox entry `outbox_id` (`present` of `expected` instruments had their row)."""
    conn.execute(
        """INSERT INTO embedder_scheduled_ticks (market_id, as_of_date, reason, instruments, expected, outbox_id)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (market_id, day, reason, present, expected, outbox_id),
    )


def newest(conn: psycopg.Connection, market_id: str) -> tuple | None:
    """The market's newest scheduled tick: (as_of_date, reason, instruments, expected, queued_at), or None."""
    return conn.execute(
        """SELECT as_of_date, reason, instruments, expected, queued_at FROM embedder_scheduled_ticks
           WHERE market_id = %s ORDER BY as_of_date DESC LIMIT 1""",
        (market_id,),
    ).fetchone()


def repoint(conn: psycopg.Connection, moved: list[tuple[int, int]]) -> None:
    """The outbox gave ticks new ids ((old, new) pairs): their scheduled rows follow."""
    for old, new in moved:
        conn.execute("UPDATE embedder_scheduled_ticks SET outbox_id = %s WHERE outbox_id = %s", (new, old))
