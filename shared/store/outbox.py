"""`prices_outbox` and its view `embedder_outbox_changes`: every statement on them. The triggers (migrations
0004/0007/0010) write the captured keys; this module writes ticks, queries, bootstrap snapshots and
re-captured rows, reads entries for `live.relay` (which publishes them in id order) as `OutboxEntry`, reads
captured keys and changes back, reports the backlog and prunes. Entry kinds are `OutboxKind`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.contract.messages import Deletion, Row
from shared.store.db import one
from shared.store.embedding_store import ENTITY_TYPE
from shared.store.instruments import SELECTABLE


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


def insert_tick(
    conn: psycopg.Connection,
    as_of: date,
    window_days: int,
    model_ids: Sequence[str],
    market_id: str | None = None,
    more_dates: Sequence[date] | None = None,
    query_run: str | None = None,
    selection: dict[str, Any] | None = None,
) -> int:
    """A tick entry (a live tick, or with `query_run` a query's): its outbox id. Callers queue the bootstrap
    first (`live.bootstrap.enqueue_tick`)."""
    return one(
        conn.execute(
            """INSERT INTO prices_outbox (kind, trade_date, more_dates, window_days, model_ids, market_id, query_run,
                                          selection)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (
                OutboxKind.TICK,
                as_of,
                list(more_dates) if more_dates else None,
                window_days,
                list(model_ids),
                market_id,
                query_run,
                Jsonb(selection) if selection is not None else None,
            ),
        )
    )[0]


def insert_snapshot(conn: psycopg.Connection) -> int:
    """A bootstrap chunk's entry: its outbox id (the chunk's instruments are recorded against it)."""
    return one(conn.execute("INSERT INTO prices_outbox (kind) VALUES (%s) RETURNING id", (OutboxKind.SNAPSHOT,)))[0]


def renumber_waiting_ticks(conn: psycopg.Connection) -> list[tuple[int, int]]:
    """Give ticks still waiting new ids, in their order, so they come after everything queued so far:
    (old id, new id) of each."""
    waiting = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM prices_outbox WHERE kind = %s AND published_at IS NULL ORDER BY id", (OutboxKind.TICK,)
        )
    ]
    moved = []
    for old in waiting:
        (new,) = one(
            conn.execute(
                """UPDATE prices_outbox SET id = nextval(pg_get_serial_sequence('prices_outbox', 'id'))
               WHERE id = %s RETURNING id""",
                (old,),
            )
        )
        moved.append((old, new))
    return moved


def requeue_live_ticks(conn: psycopg.Connection, within_days: int, partitions: int) -> list[date]:
    """Put back (unpublish) the live ticks of the last `within_days` days that fewer than `partitions`
    partitions committed: their days."""
    return [
        r[0]
        for r in conn.execute(
            """UPDATE prices_outbox o SET published_at = NULL
               WHERE kind = 'tick' AND query_run IS NULL AND published_at > now() - make_interval(days => %s)
                 AND (SELECT count(*) FROM embedder_tick_commits c
                      WHERE c.run_id = 'live' AND c.as_of_date = o.trade_date) < %s
               RETURNING trade_date""",
            (within_days, partitions),
        )
    ]


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


def captured_rows(conn: psycopg.Connection, entry_id: int) -> Iterator[list[Row | Deletion]]:
    """The keys of `keys` entry `entry_id` (its instruments x its dates) as prices_daily holds them now,
    `SLICE_KEYS` at a time: a row `(instrument_id, trade_date, close, volume)` where the key has one, else a
    deletion `(instrument_id, trade_date)`; in (trade_date, instrument_id) order. Read against the entry in
    PostgreSQL: its arrays never travel to Python and back (for a day of 5,000 instruments that was most of
    the relay's time)."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT k.i, k.d, p.close, p.volume, p.trade_date IS NOT NULL
               FROM prices_outbox o
               CROSS JOIN LATERAL (SELECT DISTINCT i, d FROM unnest(o.instrument_ids) i, unnest(o.trade_dates) d) k
               LEFT JOIN prices_daily p ON p.instrument_id = k.i AND p.trade_date = k.d
               WHERE o.id = %s
               ORDER BY k.d, k.i COLLATE "C"
            """,
            (entry_id,),
        )
        while part := cur.fetchmany(SLICE_KEYS):
            yield [Row(*r[:4]) if r[4] else Deletion(r[0], r[1]) for r in part]


@dataclass(frozen=True)
class OutboxEntry:
    """One unpublished entry, as the relay reads it (which fields are set depends on `kind`)."""

    id: int
    kind: str
    """An `OutboxKind` value (kept as read: the relay decides what an unexpected one means)."""
    instrument_id: str | None = None
    trade_date: date | None = None
    close: Decimal | float | None = None
    volume: int | None = None
    window_days: int | None = None
    model_ids: list[str] | None = None
    market_id: str | None = None
    query_run: str | None = None
    selection: dict[str, Any] | None = None
    more_dates: list[date] | None = None
    key_count: int | None = None
    """Of a `keys` entry: instruments x dates (`captured_rows` reads them)."""

    @property
    def keys(self) -> int:
        """Captured keys it names (a `keys` entry: instruments x dates; any other entry counts 1)."""
        return self.key_count or 1


ENTRY_COLUMNS = (
    "id, kind, instrument_id, trade_date, close, volume, window_days, model_ids, market_id, query_run, selection, "
    "more_dates, cardinality(instrument_ids) * cardinality(trade_dates)"
)


def unpublished(conn: psycopg.Connection, limit: int) -> list[OutboxEntry]:
    """The next `limit` unpublished entries, in id order."""
    rows = conn.execute(
        f"SELECT {ENTRY_COLUMNS} FROM prices_outbox WHERE published_at IS NULL ORDER BY id LIMIT %s", (limit,)
    ).fetchall()
    return [OutboxEntry(*r) for r in rows]


def mark_published_while_live(conn: psycopg.Connection, ids: Sequence[int], app_id: str, generation: int) -> int:
    """Mark entries published, only while `generation` is the app's live layout (after `embedder live
    repartition` what was sent went to the old layout's topic: the new layout's relay sends it again).
    Returns how many were marked (0: the layout changed)."""
    return conn.execute(
        """UPDATE prices_outbox SET published_at = now() WHERE id = ANY(%s)
           AND NOT EXISTS (SELECT 1 FROM embedder_live_layout WHERE app_id = %s AND generation <> %s)""",
        (list(ids), app_id, generation),
    ).rowcount


def outbox_position(conn: psycopg.Connection) -> int | None:
    """The newest outbox id now (None where nothing was ever captured)."""
    return one(conn.execute("SELECT max(id) FROM prices_outbox"))[0]


_CHANGES_REACHING_STORED_KEYS = f"""
    WITH changed AS (SELECT DISTINCT instrument_id, trade_date FROM embedder_outbox_changes
                     WHERE id = ANY(%(ids)s) AND instrument_id IS NOT NULL AND trade_date IS NOT NULL),
         newest AS (SELECT c.instrument_id,
                           greatest((SELECT max(e.as_of_date) FROM numeric_window_embeddings e
                                     WHERE e.entity_type = '{ENTITY_TYPE}' AND e.entity_id = c.instrument_id),
                                    (SELECT max(a.as_of_date) FROM embedder_absent_embeddings a
                                     WHERE a.entity_type = '{ENTITY_TYPE}' AND a.entity_id = c.instrument_id)) AS d
                    FROM (SELECT DISTINCT instrument_id FROM changed) c)
    SELECT changed.instrument_id, changed.trade_date FROM changed JOIN newest USING (instrument_id)
    WHERE changed.trade_date <= newest.d"""
"""Captured changes (outbox ids) that reach a key stored now: a new day's row reaches none (its tick comes
after it), a correction of history does."""


def changes_reaching_stored_keys(conn: psycopg.Connection, outbox_ids: Sequence[int]) -> list[tuple[str, date]]:
    """The changes captured by entries `outbox_ids` that reach a key stored now (embedded or absent)."""
    rows = conn.execute(_CHANGES_REACHING_STORED_KEYS, {"ids": list(outbox_ids)}).fetchall()
    return [(i, d) for i, d in rows]


def changes_since(conn: psycopg.Connection, outbox_id: int, instrument_ids: Sequence[str]) -> list[tuple[str, date]]:
    """Keys of `instrument_ids` changed by entries captured after `outbox_id`."""
    rows = conn.execute(
        """SELECT DISTINCT instrument_id, trade_date FROM embedder_outbox_changes
           WHERE id > %s AND instrument_id = ANY(%s) AND trade_date IS NOT NULL""",
        (outbox_id, list(instrument_ids)),
    ).fetchall()
    return [(i, d) for i, d in rows]


def changes_published_since(conn: psycopg.Connection, since: datetime, limit: int) -> list[tuple[str, date]]:
    """Up to `limit` keys changed by entries published since `since`."""
    rows = conn.execute(
        """SELECT DISTINCT instrument_id, trade_date FROM embedder_outbox_changes
           WHERE published_at >= %s AND instrument_id IS NOT NULL AND trade_date IS NOT NULL LIMIT %s""",
        (since, limit),
    ).fetchall()
    return [(i, d) for i, d in rows]


def captured_days(conn: psycopg.Connection, market_id: str, after: date, latest: date) -> list[tuple[date, int]]:
    """Days after `after` (up to `latest`) with a captured change to an instrument of the market and no
    scheduled tick yet, each with how many of the market's selectable instruments have a row that day."""
    rows = conn.execute(
        f"""WITH sel AS (SELECT instrument_id FROM instruments WHERE market_id = %(m)s AND {SELECTABLE}),
                 captured AS (SELECT o.trade_date FROM prices_outbox o JOIN sel USING (instrument_id)
                              WHERE o.kind = 'row'
                              UNION ALL  -- keys entries: their dates, where one of their instruments is selected
                              SELECT d FROM prices_outbox o CROSS JOIN LATERAL unnest(o.trade_dates) AS d
                              WHERE o.kind = 'keys'
                                AND o.instrument_ids && (SELECT array_agg(instrument_id)::text[] FROM sel)),
                 cand AS (SELECT DISTINCT o.trade_date FROM captured o
                          WHERE o.trade_date > %(base)s AND o.trade_date <= %(latest)s
                            AND NOT EXISTS (SELECT 1 FROM embedder_scheduled_ticks s
                                            WHERE s.market_id = %(m)s AND s.as_of_date = o.trade_date))
            SELECT c.trade_date,
                   (SELECT count(*) FROM sel WHERE EXISTS (SELECT 1 FROM prices_daily p
                        WHERE p.instrument_id = sel.instrument_id AND p.trade_date = c.trade_date))
            FROM cand c ORDER BY 1""",
        {"m": market_id, "base": after, "latest": latest},
    ).fetchall()
    return [(d, n) for d, n in rows]


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
