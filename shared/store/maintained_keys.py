"""Which keys of `numeric_window_embeddings` the project keeps exact, in one place (SPEC section 4).

A *maintained key* is `(entity_id, as_of_date, model_id)` with its `window_days`, that some run asked
for — whatever wrote it (live ticks, replays, `replay --direct`, the platform command, a legacy INSERT):

- every stored row of entity_type INSTRUMENT whose `window_spec` names its window (SQL function
  `embedder_window_days`) and whose model is known (`shared.contract.models`); the window is the row's own;
- every key a run asked for whose window had too little history, recorded in
  `embedder_absent_embeddings` (so a later INSERT of older history brings its row in).

Its value is SPEC section 3 over `prices_daily` as it is now: a row where history suffices, else no row
and an absent record. A change of the price at `(instrument, d)` can only reach the keys of that
instrument with `d <= as_of <= d + 3 * window_days` (`affected_keys`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import psycopg

from shared.contract.encoder import LOOKBACK_FACTOR
from shared.contract.models import MODELS
from shared.store.db import copy_rows, one
from shared.store.embedding_store import ENTITY_TYPE, REFUSED_SETTING, WriteResult, not_older, note_refusals
from shared.store.outbox import changes_reaching_stored_keys, changes_since

ABSENT_STAGING = "absent_staging"


@dataclass(frozen=True, order=True)
class MaintainedKey:
    entity_id: str
    as_of_date: date
    model_id: str
    window_days: int

    @property
    def key(self) -> tuple[str, date, str]:
        return (self.entity_id, self.as_of_date, self.model_id)


def _keys(rows: Iterable[tuple]) -> list[MaintainedKey]:
    return sorted({MaintainedKey(i, d, m, int(n)) for i, d, m, n in rows if m in MODELS and n})


def affected_keys(conn: psycopg.Connection, changes: Sequence[tuple[str, date]]) -> list[MaintainedKey]:
    """The maintained keys whose windows hold one of the changed `(instrument_id, trade_date)`."""
    if not changes:
        return []
    by_instrument: dict[str, list[date]] = {}
    for instrument_id, day in changes:
        by_instrument.setdefault(instrument_id, []).append(day)
    for days in by_instrument.values():
        days.sort()
    ids = list(by_instrument)
    lows = [by_instrument[i][0] for i in ids]
    candidates = conn.execute(  # every key of the instrument from its earliest change on
        f"""SELECT e.entity_id, e.as_of_date, e.model_id, embedder_window_days(e.window_spec)
            FROM unnest(%(ids)s::text[], %(lows)s::date[]) AS lo(i, d)
            JOIN numeric_window_embeddings e
              ON e.entity_type = '{ENTITY_TYPE}' AND e.entity_id = lo.i AND e.as_of_date >= lo.d
            UNION ALL
            SELECT a.entity_id, a.as_of_date, a.model_id, a.window_days
            FROM unnest(%(ids)s::text[], %(lows)s::date[]) AS lo(i, d)
            JOIN embedder_absent_embeddings a
              ON a.entity_type = '{ENTITY_TYPE}' AND a.entity_id = lo.i AND a.as_of_date >= lo.d""",
        {"ids": ids, "lows": lows},
    ).fetchall()

    def reached(instrument_id: str, as_of: date, window_days: int | None) -> bool:
        """The newest change on or before as_of lies in its look-back."""
        if not window_days:
            return False
        days = by_instrument[instrument_id]
        k = bisect_right(days, as_of)
        return k > 0 and days[k - 1] >= as_of - timedelta(days=LOOKBACK_FACTOR * window_days)

    return _keys(r for r in candidates if reached(r[0], r[1], r[3]))


def stored_keys_between(
    conn: psycopg.Connection,
    instrument_ids: Sequence[str],
    date_from: date | None,
    date_to: date | None,
    model_ids: Sequence[str] | None,
) -> list[tuple]:
    """(entity_id, as_of_date, model_id, window_days or None, vector, embedding_id) of the stored rows of
    `instrument_ids` in a date range (None: unbounded) and of `model_ids` (None: all), in key order."""
    with conn.cursor(binary=True) as cur:
        cur.execute(
            f"""SELECT entity_id, as_of_date, model_id, embedder_window_days(window_spec), vector, embedding_id
                FROM numeric_window_embeddings
                WHERE entity_type = '{ENTITY_TYPE}' AND entity_id = ANY(%(ids)s)
                  AND (%(lo)s::date IS NULL OR as_of_date >= %(lo)s::date)
                  AND (%(hi)s::date IS NULL OR as_of_date <= %(hi)s::date)
                  AND (%(models)s::text[] IS NULL OR model_id = ANY(%(models)s::text[]))
                ORDER BY entity_id, as_of_date, model_id, embedding_id""",
            {
                "ids": list(instrument_ids),
                "lo": date_from,
                "hi": date_to,
                "models": list(model_ids) if model_ids else None,
            },
        )
        return cur.fetchall()


def absent_keys_between(
    conn: psycopg.Connection,
    instrument_ids: Sequence[str],
    date_from: date | None,
    date_to: date | None,
    model_ids: Sequence[str] | None,
) -> list[MaintainedKey]:
    """The recorded absent keys of `instrument_ids` in a date range and of `model_ids` (None: all)."""
    rows = conn.execute(
        f"""SELECT entity_id, as_of_date, model_id, window_days FROM embedder_absent_embeddings
            WHERE entity_type = '{ENTITY_TYPE}' AND entity_id = ANY(%(ids)s)
              AND (%(lo)s::date IS NULL OR as_of_date >= %(lo)s::date)
              AND (%(hi)s::date IS NULL OR as_of_date <= %(hi)s::date)
              AND (%(models)s::text[] IS NULL OR model_id = ANY(%(models)s::text[]))""",
        {"ids": list(instrument_ids), "lo": date_from, "hi": date_to, "models": list(model_ids) if model_ids else None},
    ).fetchall()
    return _keys(rows)


def absent_keys_recorded_since(conn: psycopg.Connection, since: datetime, n: int) -> list[tuple]:
    """Up to `n` keys recorded absent (or recorded again) since `since`, newest first: (instrument_id, as_of_date,
    model_id, window days). Read by the parity audit (an index on recorded_at, migration 0015)."""
    return conn.execute(
        f"""SELECT entity_id, as_of_date, model_id, window_days FROM embedder_absent_embeddings
            WHERE entity_type = '{ENTITY_TYPE}' AND recorded_at >= %s ORDER BY recorded_at DESC LIMIT %s""",
        (since, n),
    ).fetchall()


def record_absent(conn: psycopg.Connection, keys: Iterable[tuple], claim: int | None = None) -> int:
    """`write_absent`, returning how many stored rows were deleted."""
    return write_absent(conn, keys, claim).changed


def write_absent(conn: psycopg.Connection, keys: Iterable[tuple], claim: int | None = None) -> WriteResult:
    """Record keys that have no embedding (too little history) and delete their stored rows, in the
    caller's transaction, fenced like every write (`shared.store.embedding_store.write_embeddings`): a key
    whose stored row or absent record was computed from newer prices is left alone (counted refused).
    Keys are `(entity_id, as_of_date, model_id, window_days[, claim])`; `changed` counts the stored rows
    deleted."""
    latest: dict[tuple, tuple] = {}
    for k in keys:
        row = tuple(k) if len(k) == 5 else (*tuple(k)[:4], claim)
        before = latest.get(row[:3])
        if before is None or before[4] is None or row[4] is None or row[4] >= before[4]:
            latest[row[:3]] = row
    if not latest:
        return WriteResult()
    same_key = """{a}.entity_type = '{e}' AND {a}.entity_id = s.entity_id AND {a}.as_of_date = s.as_of_date
                  AND {a}.model_id = s.model_id"""
    stored, recorded = same_key.format(a="t", e=ENTITY_TYPE), same_key.format(a="a", e=ENTITY_TYPE)
    with conn.cursor() as cur:
        cur.execute(f"""CREATE TEMP TABLE IF NOT EXISTS {ABSENT_STAGING} (
                            entity_id text NOT NULL, as_of_date date NOT NULL, model_id text NOT NULL,
                            window_days int4 NOT NULL, computed_from int8)""")
        cur.execute(f"TRUNCATE {ABSENT_STAGING}")
        copy_rows(
            cur,
            ABSENT_STAGING,
            ("entity_id", "as_of_date", "model_id", "window_days", "computed_from"),
            [latest[k] for k in sorted(latest)],
            ("text", "date", "text", "int4", "int8"),
        )
        # Fenced like the upsert (`shared.store.embedding_store.write_embeddings`): a key whose stored row, or absent
        # record, was computed from newer prices is refused, and embedder_refused() counts it. The EXISTS
        # probe has a LIMIT so it stays an index probe per key, whatever the table's statistics say.
        _, refused = one(
            cur.execute(
                f"""WITH recorded AS (
                    INSERT INTO embedder_absent_embeddings AS a
                        (entity_type, entity_id, as_of_date, model_id, window_days, computed_from)
                    SELECT '{ENTITY_TYPE}', s.entity_id, s.as_of_date, s.model_id, s.window_days, s.computed_from
                    FROM {ABSENT_STAGING} s
                    CROSS JOIN (SELECT set_config('{REFUSED_SETTING}', '0', true)) AS counting(reset)
                    WHERE NOT EXISTS (SELECT 1 FROM numeric_window_embeddings t WHERE {stored}
                                        AND NOT {not_older("t", "s")} LIMIT 1)
                       OR embedder_refused()
                    ORDER BY s.entity_id, s.as_of_date, s.model_id
                    ON CONFLICT (entity_type, entity_id, as_of_date, model_id) DO UPDATE
                        SET window_days = EXCLUDED.window_days, recorded_at = now(),
                            computed_from = EXCLUDED.computed_from
                        WHERE ({not_older("a", "EXCLUDED")} OR embedder_refused())
                          AND (a.window_days <> EXCLUDED.window_days
                               OR (EXCLUDED.computed_from IS NOT NULL
                                   AND a.computed_from IS DISTINCT FROM EXCLUDED.computed_from))
                    RETURNING 1)
                SELECT count(*), current_setting('{REFUSED_SETTING}')::bigint FROM recorded"""
            )
        )
        # Usually no key has a stored row to delete: an index probe per key tells (a LIMIT keeps it one whatever the
        # statistics say; a replay fills an empty table faster than they are refreshed, and on them the planner
        # hashed the whole table for every batch's DELETE, 37 ms each by the end of a whole replay).
        stored_any = f"""SELECT EXISTS (SELECT 1 FROM {ABSENT_STAGING} s CROSS JOIN LATERAL
                             (SELECT 1 FROM numeric_window_embeddings t WHERE {stored} LIMIT 1) AS found)"""
        deleted = 0
        if one(cur.execute(stored_any))[0]:
            cur.execute(
                f"""DELETE FROM numeric_window_embeddings t USING {ABSENT_STAGING} s
                    WHERE {stored} AND {not_older("t", "s")}
                      AND NOT EXISTS (SELECT 1 FROM embedder_absent_embeddings a WHERE {recorded}
                                        AND NOT {not_older("a", "s")})"""
            )
            deleted = cur.rowcount
    note_refusals(conn, refused)
    return WriteResult(deleted, refused)


def queue_recompute(conn: psycopg.Connection, changes: Sequence[tuple[str, date]]) -> int:
    """Queue `(instrument_id, trade_date)` changes for the database path (`live.corrections`), in the
    caller's transaction: every maintained key they reach is recomputed from `prices_daily`. A change
    queued again gets a new sequence number, so a recomputation running meanwhile keeps it queued."""
    unique = sorted(set(changes))
    if not unique:
        return 0
    ids, days = (list(c) for c in zip(*unique))
    return conn.execute(
        """INSERT INTO embedder_recompute_queue AS q (instrument_id, trade_date)
           SELECT i, d FROM unnest(%s::text[], %s::date[]) AS c(i, d) ORDER BY i, d
           ON CONFLICT (instrument_id, trade_date) DO UPDATE
               SET seq = nextval('embedder_recompute_seq'), queued_at = now()""",
        (ids, days),
    ).rowcount


def queue_captured_changes(conn: psycopg.Connection, outbox_ids: Sequence[int]) -> int:
    """Queue the captured changes among `outbox_ids` that reach a maintained key (the relay calls this for
    every round it publishes, before publishing: a key the stream writes later is computed from a window
    that already holds the change)."""
    if not outbox_ids:
        return 0
    return queue_recompute(conn, changes_reaching_stored_keys(conn, outbox_ids))


def queue_changes_since(conn: psycopg.Connection, outbox_id: int | None, instrument_ids: Sequence[str]) -> int:
    """Queue every change captured after outbox entry `outbox_id` for `instrument_ids`: a run that read
    `prices_daily` before such a change may have written embeddings that miss it."""
    if outbox_id is None or not instrument_ids:
        return 0
    return queue_recompute(conn, changes_since(conn, outbox_id, instrument_ids))


def recompute_backlog(conn: psycopg.Connection) -> dict:
    """The correction path's queue (captured changes still to reach the stored embeddings they reach)."""
    queued, oldest = one(conn.execute("SELECT count(*), min(queued_at) FROM embedder_recompute_queue"))
    return {"queued": int(queued), "oldest_queued": oldest.isoformat(timespec="seconds") if oldest else None}


def oldest_queued_instruments(conn: psycopg.Connection, max_changes: int, max_instruments: int) -> list[str]:
    """The (at most `max_instruments`) instruments among the oldest `max_changes` queued changes, oldest
    first."""
    return [
        r[0]
        for r in conn.execute(
            """SELECT instrument_id FROM (SELECT instrument_id, min(seq) AS first
                                      FROM (SELECT instrument_id, seq FROM embedder_recompute_queue
                                            ORDER BY seq LIMIT %s) oldest
                                      GROUP BY instrument_id) t
           ORDER BY first LIMIT %s""",
            (max_changes, max_instruments),
        )
    ]


def queued_changes_of(conn: psycopg.Connection, instrument_ids: list[str]) -> list[tuple[str, date, int]]:
    """Every queued change of `instrument_ids`: (instrument_id, trade_date, seq)."""
    return [
        (i, d, q)
        for i, d, q in conn.execute(
            "SELECT instrument_id, trade_date, seq FROM embedder_recompute_queue WHERE instrument_id = ANY(%s)",
            (instrument_ids,),
        )
    ]


def dequeue(conn: psycopg.Connection, items: Sequence[tuple[str, date, int]]) -> None:
    """Remove the changes taken (by their seq: a change queued again meanwhile stays queued)."""
    conn.execute(
        """DELETE FROM embedder_recompute_queue q
           USING unnest(%s::text[], %s::date[], %s::bigint[]) AS t(i, d, s)
           WHERE q.instrument_id = t.i AND q.trade_date = t.d AND q.seq = t.s""",
        ([i for i, _, _ in items], [d for _, d, _ in items], [s for _, _, s in items]),
    )


def queue_depth(conn: psycopg.Connection) -> int:
    """Changes waiting in the queue."""
    return one(conn.execute("SELECT count(*) FROM embedder_recompute_queue"))[0]


def queue_every_maintained_key(conn: psycopg.Connection) -> int:
    """Queue every maintained key (embedded or recorded absent) for the correction path; returns how many."""
    return conn.execute(
        f"""INSERT INTO embedder_recompute_queue AS q (instrument_id, trade_date)
            SELECT entity_id, as_of_date FROM numeric_window_embeddings
            WHERE entity_type = '{ENTITY_TYPE}' AND length(entity_id) <= 50
              AND embedder_window_days(window_spec) IS NOT NULL
            UNION
            SELECT entity_id, as_of_date FROM embedder_absent_embeddings
            WHERE entity_type = '{ENTITY_TYPE}' AND length(entity_id) <= 50
            ON CONFLICT (instrument_id, trade_date) DO UPDATE
                SET seq = nextval('embedder_recompute_seq'), queued_at = now()"""
    ).rowcount


def queued_or_unpublished(conn: psycopg.Connection, instrument_ids: Sequence[str]) -> set[str]:
    """Those of `instrument_ids` with a change queued here or captured and not yet published."""
    return {
        r[0]
        for r in conn.execute(
            """SELECT instrument_id FROM embedder_recompute_queue WHERE instrument_id = ANY(%(ids)s)
           UNION
           SELECT instrument_id FROM embedder_outbox_changes
           WHERE published_at IS NULL AND instrument_id = ANY(%(ids)s)""",
            {"ids": list(set(instrument_ids))},
        )
    }


def maintained_instruments(conn: psycopg.Connection, lo: date | None, hi: date | None) -> list[str]:
    """Instruments with a maintained key (embedded or recorded absent) between `lo` and `hi` (None: open)."""
    return [
        r[0]
        for r in conn.execute(
            f"""SELECT entity_id FROM numeric_window_embeddings WHERE entity_type = '{ENTITY_TYPE}'
              AND (%(lo)s::date IS NULL OR as_of_date >= %(lo)s) AND (%(hi)s::date IS NULL OR as_of_date <= %(hi)s)
            UNION
            SELECT entity_id FROM embedder_absent_embeddings WHERE entity_type = '{ENTITY_TYPE}'
              AND (%(lo)s::date IS NULL OR as_of_date >= %(lo)s) AND (%(hi)s::date IS NULL OR as_of_date <= %(hi)s)
            ORDER BY 1""",
            {"lo": lo, "hi": hi},
        )
    ]


def maintained_models(conn: psycopg.Connection) -> set[str]:
    """Every model with a maintained key, embedded or recorded absent."""
    return {
        r[0]
        for r in conn.execute(
            """SELECT DISTINCT model_id FROM numeric_window_embeddings
           UNION SELECT DISTINCT model_id FROM embedder_absent_embeddings"""
        )
    }


def stored_keys_at(conn: psycopg.Connection, days: Sequence[date], n: int) -> list[tuple]:
    """About `n` stored keys of `days`, drawn at random: (instrument_id, as_of_date, model_id, window days)."""
    return conn.execute(
        f"""SELECT entity_id, as_of_date, model_id, embedder_window_days(window_spec) FROM numeric_window_embeddings
            WHERE entity_type = '{ENTITY_TYPE}' AND as_of_date = ANY(%s) ORDER BY random() LIMIT %s""",
        (list(days), n),
    ).fetchall()


def stored_keys_after(conn: psycopg.Connection, after: tuple, n: int) -> list[tuple]:
    """The next `n` stored keys in key order after `after` ((instrument_id, as_of_date, model_id); None
    fields: from the start): (instrument_id, as_of_date, model_id, window days)."""
    return conn.execute(
        f"""SELECT entity_id, as_of_date, model_id, embedder_window_days(window_spec)
            FROM numeric_window_embeddings
            WHERE entity_type = '{ENTITY_TYPE}'
              AND (%(i)s::text IS NULL
                   OR (entity_type, entity_id, as_of_date, model_id) > ('{ENTITY_TYPE}', %(i)s, %(d)s, %(m)s))
            ORDER BY entity_type, entity_id, as_of_date, model_id LIMIT %(n)s""",
        {"i": after[0], "d": after[1], "m": after[2], "n": n},
    ).fetchall()
