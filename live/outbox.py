"""The outbox as a table: what writes entries into `prices_outbox` (ticks, re-captured rows), what reads
captured keys back, its backlog and its pruning. The triggers (migrations 0004/0007/0010) write the
captured keys; `live.relay` publishes entries in id order. Entry kinds are `OutboxKind`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

import psycopg

from live.bootstrap import CHUNK_INSTRUMENTS, queue_bootstrap
from shared.contract.messages import Deletion, Row
from shared.store.db import one


class OutboxKind(StrEnum):
    """`prices_outbox.kind`: what an entry asks the relay to publish."""

    ROW = "row"  # one captured row (releases before migration 0010, dead-letter re-drives)
    DELETE = "delete"  # one deleted key (releases before migration 0010)
    KEYS = "keys"  # a statement's captured keys: instrument_ids x trade_dates, read back from prices_daily
    SNAPSHOT = "snapshot"  # a bootstrap chunk: instruments' history loaded into the live windows
    TICK = "tick"  # a live tick, or a query (with a query run)


SLICE_KEYS = 50_000
"""Keys of one entry read from prices_daily at a time: bounds the relay's memory."""

OUTBOX_CHANNEL = "embedder_outbox"
"""Notified (at commit) when a tick or a query is queued: the relay, waiting between polls, wakes at once."""


def wake_relay(conn: psycopg.Connection) -> None:
    """Wake the relay when the current transaction commits (a no-op for it until then)."""
    conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")


def enqueue_tick(
    conn: psycopg.Connection,
    as_of: date,
    window_days: int,
    model_ids: list[str],
    market_id: str | None = None,
    chunk: int = CHUNK_INSTRUMENTS,
) -> int:
    """Queue a live tick behind every row already committed to the outbox, and behind the bootstrap
    of every instrument not loaded yet (so it never computes from a window still missing its
    history); returns its outbox id."""
    with conn.transaction():
        queue_bootstrap(conn, chunk=chunk)
        wake_relay(conn)
        return one(
            conn.execute(
                """INSERT INTO prices_outbox (kind, trade_date, window_days, model_ids, market_id)
               VALUES (%s, %s, %s, %s, %s) RETURNING id""",
                (OutboxKind.TICK, as_of, window_days, model_ids, market_id),
            )
        )[0]


def recapture(conn: psycopg.Connection, keys: list[tuple[str, date]]) -> int:
    """Capture rows again as `prices_daily` holds them now (re-driving dead letters): each goes
    through the relay's checks like any captured row. Rows no longer there are skipped (a
    dead-lettered row never reached the windows, so there is nothing to undo). Returns how many."""
    if not keys:
        return 0
    ids, days = (list(col) for col in zip(*keys))
    return conn.execute(
        """INSERT INTO prices_outbox (instrument_id, trade_date, close, volume)
           SELECT p.instrument_id, p.trade_date, p.close, p.volume
           FROM (SELECT DISTINCT * FROM unnest(%s::text[], %s::date[]) AS k(i, d)) k
           JOIN prices_daily p ON p.instrument_id = k.i AND p.trade_date = k.d
           ORDER BY p.trade_date, p.instrument_id""",
        (ids, days),
    ).rowcount


def captured_rows(
    conn: psycopg.Connection, instrument_ids: list[str], trade_dates: list[date]
) -> Iterator[list[Row | Deletion]]:
    """The keys of a `keys` entry as prices_daily holds them now, a slice of instruments at a time: a
    row `(instrument_id, trade_date, close, volume)` where the key has one, else a deletion
    `(instrument_id, trade_date)`; in (trade_date, instrument_id) order within a slice."""
    days = sorted(set(trade_dates))
    step = max(1, SLICE_KEYS // max(len(days), 1))
    ids = sorted(set(instrument_ids))
    wanted = set(days)
    for start in range(0, len(ids), step):
        part = ids[start : start + step]
        present = conn.execute(
            """SELECT instrument_id, trade_date, close, volume FROM prices_daily
               WHERE instrument_id = ANY(%s) AND trade_date BETWEEN %s AND %s""",
            (part, days[0], days[-1]),
        ).fetchall()
        rows = {(r[0], r[1]): Row(*r) for r in present if r[1] in wanted}
        yield [rows.get((i, d)) or Deletion(i, d) for d in days for i in part]


@dataclass(frozen=True)
class OutboxBacklog:
    """What waits in the outbox: entries, the captured keys they name, the table's bytes on disk, and
    the age of the oldest unpublished entry (0 when none waits)."""

    entries: int
    keys: int
    bytes: int
    oldest_seconds: float


def outbox_backlog(conn: psycopg.Connection) -> OutboxBacklog:
    entries, keys, size, oldest = one(
        conn.execute(
            """SELECT count(*),
                  coalesce(sum(CASE WHEN kind = 'keys' THEN cardinality(instrument_ids) * cardinality(trade_dates)
                                    WHEN kind IN ('row', 'delete') THEN 1 ELSE 0 END), 0),
                  pg_total_relation_size('prices_outbox'),
                  coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)
           FROM prices_outbox WHERE published_at IS NULL"""
        )
    )
    return OutboxBacklog(int(entries), int(keys), int(size), float(oldest))


def prune_outbox(conn: psycopg.Connection, keep_hours: float) -> int:
    """Delete outbox entries published more than `keep_hours` ago; unpublished ones are never touched
    (the table would otherwise grow by every captured price forever)."""
    cur = conn.execute(
        "DELETE FROM prices_outbox WHERE published_at < now() - make_interval(secs => %s)", (keep_hours * 3600.0,)
    )
    return cur.rowcount
