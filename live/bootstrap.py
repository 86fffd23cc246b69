"""Bootstrap of the live windows from `prices_daily`: the "initial snapshot, then stream" of CDC tools.

History written before this project was installed never passed a capture trigger.
An ACTIVE EQUITY instrument the live run has not loaded is *queued*: one
`snapshot` entry in `prices_outbox` per chunk of instruments, and a row per
instrument in `embedder_bootstrap` naming that entry. When the relay reaches the
entry (in outbox id order, like every capture) it reads the chunk's retained
look-back from `prices_daily` and publishes it right there (`read_snapshot`).

Why that is consistent (the outbox is the log, as in DBLog / Debezium's
incremental snapshots): any change to a row committed after the relay's read has
an outbox entry published after the snapshot, so the log's version wins; a change
committed before the read is in the snapshot and its entry re-applies the same
value. Each chunk is one transaction (resumable after kill -9: a chunk is queued
or not, published or not; publishing twice is harmless). Memory is bounded by the
chunk. Ticks are queued behind the snapshots of the instruments they cover
(`enqueue_tick` queues what is pending first), so no tick computes from a window
still waiting for its history.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import psycopg

from shared.contract.validation import latest_trade_date
from shared.store import scheduled_ticks
from shared.store.db import one
from shared.store.instruments import SELECTABLE, newest_trade_date_sql
from shared.store.outbox import insert_snapshot, insert_tick, renumber_waiting_ticks, wake_relay
from shared.store.price_history import rows_between

log = logging.getLogger("embedder.bootstrap")
BOOTSTRAP_LOCK = 727_002  # pg advisory lock: one transaction queues snapshots (or a tick) at a time
CHUNK_INSTRUMENTS = 100


@dataclass(frozen=True)
class BootstrapProgress:
    """How far the bootstrap is: instruments the market selection takes, queued, loaded."""

    selectable: int
    queued: int
    published: int
    rows: int

    @property
    def pending(self) -> int:
        return self.queued - self.published

    @property
    def unqueued(self) -> int:
        return max(self.selectable - self.queued, 0)


def queue_bootstrap(
    conn: psycopg.Connection,
    market_id: str | None = None,
    chunk: int = CHUNK_INSTRUMENTS,
    only: list[str] | None = None,
    resync: bool = False,
) -> int:
    """Queue every selectable instrument (of `market_id`, or of `only`) not queued before; returns how
    many. With `resync`, the snapshots also delete from the windows the dates prices_daily no longer
    has (`live.capture`). Runs in the caller's transaction (or its own, on an autocommit connection)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (BOOTSTRAP_LOCK,))
        ids = [
            r[0]
            for r in conn.execute(
                f"""SELECT instrument_id FROM instruments i
                WHERE {SELECTABLE} AND (%s::varchar IS NULL OR market_id = %s::varchar)
                  AND (%s::text[] IS NULL OR instrument_id = ANY(%s::text[]))
                  AND NOT EXISTS (SELECT 1 FROM embedder_bootstrap b WHERE b.instrument_id = i.instrument_id)
                ORDER BY instrument_id""",
                (market_id, market_id, only, only),
            )
        ]
        for start in range(0, len(ids), chunk):
            outbox_id = insert_snapshot(conn)
            conn.execute(
                """INSERT INTO embedder_bootstrap (instrument_id, outbox_id, resync)
                            SELECT unnest(%s::text[]), %s, %s""",
                (ids[start : start + chunk], outbox_id, resync),
            )
    if ids:
        log.warning("bootstrap: queued %d instrument(s) for loading from prices_daily", len(ids))
    return len(ids)


def requeue_lost(conn: psycopg.Connection, instrument_ids: list[str]) -> int:
    """Load again instruments the live windows lost (a tick found no window for them although their
    snapshot had rows: state folder and changelogs gone). Instruments without history stay done. One
    transaction: forgotten and queued again together, on any connection."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (BOOTSTRAP_LOCK,))
        lost = [
            r[0]
            for r in conn.execute(
                """DELETE FROM embedder_bootstrap
                   WHERE instrument_id = ANY(%s) AND published_at IS NOT NULL AND rows > 0
               RETURNING instrument_id""",
                (instrument_ids,),
            )
        ]
        return queue_bootstrap(conn, only=lost) if lost else 0


def fallen_short(conn: psycopg.Connection, since: date, until: date, held: Mapping[str, int]) -> list[str]:
    """Of windows a live tick found too short to embed (`held`: rows each holds of [since, until]), those of
    instruments prices_daily holds more rows of there: windows that lost rows they had (a restore that missed
    some), to be loaded again (`requeue_lost`). A recently listed instrument's window holds what the table does."""
    more = rows_between(conn, list(held), since, until)
    short = sorted(i for i, n in held.items() if more[i] > n)
    if short:
        log.warning(
            "live tick: %d window(s) hold fewer rows of %s..%s than prices_daily (%s); loading them again",
            len(short),
            since,
            until,
            ", ".join(f"{i} {held[i]} of {more[i]}" for i in short[:8]),
        )
    return short


def reload_windows(conn: psycopg.Connection, instrument_ids: list[str]) -> int:
    """Load instruments' live windows again from prices_daily, deleting the dates it no longer has (a resync
    snapshot): for windows the parity audit found computing wrong embeddings. Returns how many were queued."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (BOOTSTRAP_LOCK,))
        ids = [
            r[0]
            for r in conn.execute(
                "DELETE FROM embedder_bootstrap WHERE instrument_id = ANY(%s) AND published_at IS NOT NULL "
                "RETURNING instrument_id",
                (instrument_ids,),
            )
        ]
    return queue_bootstrap(conn, only=ids, resync=True) if ids else 0


def reset_bootstrap(conn: psycopg.Connection, market_id: str | None = None) -> int:
    """Forget what was loaded (of `market_id`), so the next queue loads it again: for live windows
    that were lost as a whole (new Kafka cluster, new app id)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (BOOTSTRAP_LOCK,))
        return conn.execute(
            """DELETE FROM embedder_bootstrap b USING instruments i
               WHERE i.instrument_id = b.instrument_id AND (%s::varchar IS NULL OR i.market_id = %s::varchar)""",
            (market_id, market_id),
        ).rowcount


def read_snapshot(conn: psycopg.Connection, outbox_id: int, keep_days: int, today: date | None = None) -> list[tuple]:
    """The rows a snapshot entry loads, in trade_date order: for each of its instruments, every row
    from its newest plausible trade_date minus `keep_days` on (what the live window keeps). Rows
    dated in the future are included so the relay dead-letters them with their reason. An instrument
    queued by a resync also gets a deletion (a 2-tuple) for every other day since its window's first
    kept day: the windows may hold rows deleted while capture was off."""
    params = {"entry": outbox_id, "latest": latest_trade_date(today), "keep": keep_days}
    rows = conn.execute(
        f"""WITH ids AS (SELECT instrument_id FROM embedder_bootstrap WHERE outbox_id = %(entry)s),
                newest AS (SELECT ids.instrument_id, {newest_trade_date_sql("ids", "%(latest)s")} AS d FROM ids)
           SELECT p.instrument_id, p.trade_date, p.close, p.volume
           FROM newest n JOIN prices_daily p ON p.instrument_id = n.instrument_id AND p.trade_date >= n.d - %(keep)s
           ORDER BY p.trade_date, p.instrument_id""",
        params,
    ).fetchall()
    gone = conn.execute(
        f"""WITH ids AS (SELECT instrument_id FROM embedder_bootstrap WHERE outbox_id = %(entry)s AND resync),
                newest AS (SELECT ids.instrument_id, {newest_trade_date_sql("ids", "%(latest)s")} AS d FROM ids)
           SELECT n.instrument_id, day::date
           FROM newest n CROSS JOIN LATERAL generate_series(coalesce(n.d, %(latest)s::date) - %(keep)s,
                                                             %(latest)s::date, interval '1 day') AS day
           WHERE NOT EXISTS (SELECT 1 FROM prices_daily p WHERE p.instrument_id = n.instrument_id
                                                           AND p.trade_date = day::date)
           ORDER BY 2, 1""",
        params,
    ).fetchall()
    return [tuple(r) for r in gone] + rows


def mark_published(conn: psycopg.Connection, rows_by_entry: Mapping[int, Mapping[str, int]]) -> None:
    """Record the snapshot entries as loaded, with the rows each instrument got."""
    for outbox_id, counts in rows_by_entry.items():
        conn.execute(
            """UPDATE embedder_bootstrap b SET published_at = now(), rows = coalesce(c.n, 0)
               FROM embedder_bootstrap x LEFT JOIN unnest(%s::text[], %s::int[]) AS c(id, n) ON c.id = x.instrument_id
               WHERE x.outbox_id = %s AND b.instrument_id = x.instrument_id""",
            (list(counts), list(counts.values()), outbox_id),
        )


def progress(conn: psycopg.Connection, market_id: str | None = None) -> BootstrapProgress:
    """Counts for `embedder status` and `embedder live bootstrap`."""
    selectable, queued, published, rows = one(
        conn.execute(
            f"""SELECT (SELECT count(*) FROM instruments WHERE {SELECTABLE}
                      AND (%(m)s::varchar IS NULL OR market_id = %(m)s::varchar)),
                   count(b.*), count(b.published_at), coalesce(sum(b.rows), 0)
            FROM embedder_bootstrap b JOIN instruments i USING (instrument_id)
            WHERE %(m)s::varchar IS NULL OR i.market_id = %(m)s::varchar""",
            {"m": market_id},
        )
    )
    return BootstrapProgress(selectable, queued, published, int(rows))


def reconcile_state_format(conn: psycopg.Connection, app_id: str, version: int, generation: int = 0) -> int | None:
    """On worker start: make the database's record of the worker group's state format `version` in layout
    `generation` (`shared.store.live_layout`).

    Where it records another format or generation, or none although live windows were loaded before (a
    release before formats were recorded, or a new app id: lost changelogs), the state this worker reads is
    not the state that was loaded, so everything is queued for loading again from prices_daily, and ticks
    waiting in the outbox are moved behind those loads. Returns the format that was found (0: unknown) when
    the live windows are rebuilt, else None."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (BOOTSTRAP_LOCK,))
        row = conn.execute(
            "SELECT version, generation FROM embedder_state_format WHERE app_id = %s", (app_id,)
        ).fetchone()
        if row is not None and tuple(row) == (version, generation):
            return None
        loaded = one(conn.execute("SELECT EXISTS (SELECT 1 FROM embedder_bootstrap)"))[0]
        conn.execute(
            """INSERT INTO embedder_state_format (app_id, version, generation) VALUES (%s, %s, %s)
               ON CONFLICT (app_id) DO UPDATE SET version = EXCLUDED.version, generation = EXCLUDED.generation,
                                                  recorded_at = now()""",
            (app_id, version, generation),
        )
        if row is None and not loaded:
            return None  # a first start: nothing was loaded anywhere
        conn.execute("DELETE FROM embedder_bootstrap")
        queue_bootstrap(conn)
        moved = move_ticks_behind(conn)
    found = row[0] if row is not None else 0
    if row is not None and row[0] == version:
        log.warning(
            "worker state: app id %r moves to live layout generation %d (was %d); the live windows are "
            "rebuilt from prices_daily (bootstrap), %d waiting tick(s) behind them",
            app_id,
            generation,
            row[1],
            moved,
        )
    else:
        log.warning(
            "worker state: the database records state format %s for app id %r, this worker reads format "
            "%d; the live windows are rebuilt from prices_daily (bootstrap)",
            found or "unknown",
            app_id,
            version,
        )
    return found


def forget_loaded_instruments(conn: psycopg.Connection) -> bool:
    """After capture was off: forget which instruments were loaded (they are queued again), and mark the
    snapshots still waiting as a resync (they load windows that may hold rows deleted during the gap).
    Returns whether any window had been loaded."""
    loaded = one(conn.execute("SELECT EXISTS (SELECT 1 FROM embedder_bootstrap WHERE rows > 0)"))[0]
    conn.execute("DELETE FROM embedder_bootstrap WHERE published_at IS NOT NULL")
    if loaded:
        conn.execute("UPDATE embedder_bootstrap SET resync = true")
    return bool(loaded)


def pending_instruments(conn: psycopg.Connection) -> int:
    """Instruments queued for loading whose snapshot is not published yet."""
    return one(conn.execute("SELECT count(*) FROM embedder_bootstrap WHERE published_at IS NULL"))[0]


def move_ticks_behind(conn: psycopg.Connection) -> int:
    """Give ticks still waiting in the outbox new ids, in their order, so they come after everything
    queued so far (a tick queued while the service was away, or before a repartition, must not compute
    from windows not reloaded yet). Returns how many moved."""
    moved = renumber_waiting_ticks(conn)
    scheduled_ticks.repoint(conn, moved)
    return len(moved)


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
        return insert_tick(conn, as_of, window_days, model_ids, market_id)
