"""Writing embeddings: binary COPY into a staging table, then one idempotent upsert.

Every path (the direct batch path and the stream's sink) writes through here,
so running anything twice never duplicates a row and never rewrites an
identical one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import date
from operator import itemgetter
from typing import cast

import psycopg

from shared.store.db import copy_rows, one

ENTITY_TYPE = "INSTRUMENT"
STAGING = "embeddings_staging"
STAGING_COLUMNS = ("entity_id", "as_of_date", "model_id", "window_days", "vector", "computed_from")
STAGING_TYPES = ("text", "date", "text", "int4", "bytea", "int8")


@dataclass(frozen=True)
class EmbeddingRow:
    """One stored embedding: `vector` is already little-endian float32 bytes."""

    entity_id: str
    as_of_date: date
    model_id: str
    window_days: int
    vector: bytes


def window_spec_sql(window_days_expr: str) -> str:
    """SQL for SPEC section 2's window_spec JSON from a window-days expression."""
    return f"jsonb_build_object('window_days', {window_days_expr}, 'entity_type', '{ENTITY_TYPE}')"


REFUSED_SETTING = "embedder.refused"
"""Transaction-local: rows the current write statement refused (counted by `embedder_refused()`, migration 0013)."""

CAUSE_SETTING = "embedder.cause"
"""Transaction-local: why the transaction changes embeddings. The version triggers (migration 0012) record
it with every row a change supersedes; a writer that does not set it is named by role and application."""


def set_cause(conn: psycopg.Connection, kind: str, detail: str) -> None:
    """Name why the current transaction changes embeddings ("kind: detail"; kinds: live, correction,
    replay, query, direct, repair). Call it inside the transaction that writes."""
    conn.execute("SELECT set_config(%s, %s, true)", (CAUSE_SETTING, f"{kind}: {detail}"[:1000]))


def price_changes(changes: Iterable[tuple[str, date]], shown: int = 5) -> str:
    """The price changes behind a correction, for the versions it supersedes: "prices of A 2019-12-19,
    2019-12-20; B 2018-03-01 and 4 more instruments"."""
    by_instrument: dict[str, list[date]] = {}
    for instrument_id, day in changes:
        by_instrument.setdefault(instrument_id, []).append(day)
    if not by_instrument:
        return ""
    parts = [
        f"{i} " + ", ".join(str(d) for d in sorted(set(days))[:3]) + ("…" if len(set(days)) > 3 else "")
        for i, days in list(by_instrument.items())[:shown]
    ]
    more = f" and {len(by_instrument) - shown} more instruments" if len(by_instrument) > shown else ""
    return "prices of " + "; ".join(parts) + more


def ensure_staging(cur: psycopg.Cursor) -> None:
    """Create this session's temporary staging table once (it lives until disconnect)."""
    cur.execute(
        f"""CREATE TEMP TABLE IF NOT EXISTS {STAGING} (
            entity_id text NOT NULL, as_of_date date NOT NULL, model_id text NOT NULL,
            window_days int4 NOT NULL, vector bytea NOT NULL, computed_from int8)"""
    )


@dataclass(frozen=True)
class WriteResult:
    """What a fenced write did: rows inserted or changed, and rows refused because the table held one
    computed from newer prices (`shared.store.write_claims`)."""

    changed: int = 0
    refused: int = 0


def not_older(stored: str, write: str) -> str:
    """SQL: the stored row (alias `stored`) was computed from no newer prices than the write (`write`). A
    missing claim — plain SQL, a release before claims — ranks below every claim; an unclaimed write is
    not fenced."""
    a, b = f"{stored}.computed_from", f"{write}.computed_from"
    return f"({a} IS NULL OR {b} IS NULL OR {a} <= {b})"


KEY_OF = itemgetter(0, 1, 2)
"""A staged row's key: (entity_id, as_of_date, model_id)."""


def _staged(rows: Iterable[tuple | EmbeddingRow], claim: int | None) -> list[tuple]:
    """One row per key, in key order: where a key repeats, the highest claim wins, then the last row."""
    latest: dict[tuple, tuple] = {}
    for r in rows:
        if isinstance(r, EmbeddingRow):
            t: tuple = (r.entity_id, r.as_of_date, r.model_id, r.window_days, r.vector, claim)
        else:
            t = tuple(r) if len(r) == 6 else (*r, claim)
        key = (t[0], t[1], t[2])
        before = latest.get(key)
        if before is None or before[5] is None or t[5] is None or t[5] >= before[5]:
            latest[key] = t
    return [latest[k] for k in sorted(latest)]


def absent_probe(exact: bool = False) -> str:
    """SQL: are there absent keys of these ids (`%b` text[]: binary, a live tick's 10,000 ids cost the sink 10 ms of
    CPU as text, 2.6 as binary) between two days (`%s`, `%s`)? `exact`: only the keys staged for the write."""
    staged = (
        f"JOIN {STAGING} s ON s.entity_id = a.entity_id AND s.as_of_date = a.as_of_date AND s.model_id = a.model_id"
        if exact
        else ""
    )
    return f"""SELECT EXISTS (SELECT 1 FROM embedder_absent_embeddings a {staged}
                              WHERE a.entity_type = '{ENTITY_TYPE}' AND a.entity_id IN (SELECT unnest(%b::text[]))
                                AND a.as_of_date BETWEEN %s AND %s)"""


def write_embeddings(
    conn: psycopg.Connection,
    rows: Iterable[tuple | EmbeddingRow],
    claim: int | None = None,
    one_per_key: bool = False,
    upserting: AbstractContextManager[object] | None = None,
) -> WriteResult:
    """Stage `rows` and upsert them in the caller's transaction, fenced: a stored row computed from newer
    prices than this write (its `computed_from` above the write's claim), or a key recorded absent from
    newer prices, is left alone and counted as refused. Identical rewrites of the same claim change
    nothing; an identical vector from newer prices records the newer claim (so a computation between the
    two can never win later).

    Rows are EmbeddingRow or tuples `(entity_id, as_of_date, model_id, window_days, vector[, claim])`
    (`claim` is every row's claim where the row has none: `shared.store.write_claims`). A key written here is
    no longer an absent one (`shared.store.maintained_keys`). The caller commits; on failure nothing of this
    batch is visible. `one_per_key`: the rows are 6-tuples with a claim each and no key repeats (the sink chose
    them already: `streams.sink.newest_per_key`), so they are only put in key order. `upserting` is held around
    the upsert statement alone (the sink's writers take turns there: `streams.sink.SinkWriter`)."""
    staged = sorted(cast("Iterable[tuple]", rows), key=KEY_OF) if one_per_key else _staged(rows, claim)
    if not staged:
        return WriteResult()
    with conn.cursor() as cur:
        ensure_staging(cur)
        # The staging table has no statistics: the planner guesses ~230,000 rows and JIT-compiles the upsert
        # (0.3-0.8 s of a 20,000-row write, measured), never worth it here. Session-wide on this connection.
        cur.execute(f"TRUNCATE {STAGING}; SET jit = off")
        # In key order (nearly free: every path produces rows per instrument and date), so concurrent
        # writers (the sink, the correction path) lock rows in one order: the statement below reads the
        # staging table in that order and keeps it.
        copy_rows(cur, STAGING, STAGING_COLUMNS, staged, STAGING_TYPES)
        ids = list({row[0] for row in staged})
        days = [row[1] for row in staged]
        # The usual case: none of these instruments has absent keys between the batch's first and last day (a
        # replay records its instruments' first days absent, then writes years after them: probing by id alone,
        # every batch after those days took the slow path below, 12 % of PostgreSQL's time in a whole replay).
        # Joined to the ids as a set: `entity_id = ANY(%s)` is, in the generic plan psycopg's prepared statement
        # gets after five runs, a filter comparing every absent row of the table with every id (60 ms for 2,500
        # ids and 2,800 absent keys, growing with both; half of PostgreSQL's time in a live tick, measured); this
        # is a hash join or one index range probe per id.
        # Where some are, the staged keys themselves are looked up (a scan of the staging table, ~15 ms for 20,000
        # rows, so not first): a replay's batch spans its instruments' first, absent, days and the days after
        # them, yet writes none of the absent keys (20 of 40 batches of a whole replay took the slow path for
        # nothing, its DELETE alone 30 ms each).
        span = (ids, min(days), max(days))
        absent = one(cur.execute(absent_probe(), span))[0] and one(cur.execute(absent_probe(exact=True), span))[0]
        newer_absent = (
            f"""WHERE NOT EXISTS (SELECT 1 FROM embedder_absent_embeddings a
                                 WHERE a.entity_type = '{ENTITY_TYPE}' AND a.entity_id = s.entity_id
                                   AND a.as_of_date = s.as_of_date AND a.model_id = s.model_id
                                   AND NOT {not_older("a", "s")} LIMIT 1)
                     OR embedder_refused()"""
            if absent
            else ""
        )
        # The fence is the conflict clause: judged on the newest version of each stored row, also one another
        # writer committed after this statement began. A row it refuses calls embedder_refused() (never
        # otherwise: OR stops at its first true term), which counts it in a transaction-local setting that
        # the statement resets before its first row and reads after its last.
        upsert = f"""
            WITH upserted AS (
            INSERT INTO numeric_window_embeddings AS t
                (entity_type, entity_id, window_spec, as_of_date, model_id, vector, computed_from)
            SELECT '{ENTITY_TYPE}', s.entity_id, {window_spec_sql("s.window_days")}, s.as_of_date, s.model_id,
                   s.vector, s.computed_from
            FROM {STAGING} s CROSS JOIN (SELECT set_config('{REFUSED_SETTING}', '0', true)) AS counting(reset)
            {newer_absent}
            ON CONFLICT (entity_type, entity_id, as_of_date, model_id) DO UPDATE SET
                window_spec = EXCLUDED.window_spec, vector = EXCLUDED.vector, vector_ref = NULL,
                computed_from = EXCLUDED.computed_from
            WHERE ({not_older("t", "EXCLUDED")} OR embedder_refused())
              AND ((t.window_spec, t.vector, t.vector_ref) IS DISTINCT FROM
                   (EXCLUDED.window_spec, EXCLUDED.vector, NULL::varchar)
                   OR (EXCLUDED.computed_from IS NOT NULL AND t.computed_from IS DISTINCT FROM EXCLUDED.computed_from))
            RETURNING 1)
            SELECT count(*), current_setting('{REFUSED_SETTING}')::bigint FROM upserted
            """
        with upserting or nullcontext():
            changed, refused = one(cur.execute(upsert))
        if absent:
            cur.execute(
                f"""DELETE FROM embedder_absent_embeddings a USING {STAGING} s
                    WHERE a.entity_type = '{ENTITY_TYPE}' AND a.entity_id = s.entity_id
                      AND a.as_of_date = s.as_of_date AND a.model_id = s.model_id
                      AND {not_older("a", "s")}"""
            )
        note_refusals(conn, refused)
        return WriteResult(changed, refused)


def upsert_embeddings(conn: psycopg.Connection, rows: Iterable[tuple | EmbeddingRow], claim: int | None = None) -> int:
    """`write_embeddings`, returning how many stored rows were inserted or changed."""
    return write_embeddings(conn, rows, claim).changed


def note_refusals(conn: psycopg.Connection, refused: int) -> None:
    """Count refused writes for `embedder status` (per UTC day, writer — the cause's kind — and session),
    in the caller's transaction."""
    if refused <= 0:
        return
    conn.execute(
        """INSERT INTO embedder_write_refusals AS r (day, writer, backend, refused)
           VALUES ((now() AT TIME ZONE 'UTC')::date, left(split_part(embedder_change_cause(), ':', 1), 32),
                   pg_backend_pid(), %s)
           ON CONFLICT (day, writer, backend) DO UPDATE SET refused = r.refused + EXCLUDED.refused, last_at = now()""",
        (refused,),
    )


def refusals_by_day(conn: psycopg.Connection, days: int) -> list[tuple[date, str, int]]:
    """(UTC day, writer, embeddings refused) over the last `days` days, newest first."""
    return [
        (d, w, int(n))
        for d, w, n in conn.execute(
            """SELECT day, writer, sum(refused) FROM embedder_write_refusals
               WHERE day > (now() AT TIME ZONE 'UTC')::date - %s GROUP BY day, writer ORDER BY day DESC, writer""",
            (days,),
        )
    ]


def drop_duplicate_rows(conn: psycopg.Connection, keys: Sequence[tuple[str, date, str]]) -> None:
    """Keep the newest row of each duplicated key (the repair then rewrites it)."""
    ids, days, models = (list(c) for c in zip(*keys))
    conn.execute(
        f"""DELETE FROM numeric_window_embeddings t
            USING unnest(%s::text[], %s::date[], %s::text[]) AS k(i, d, m)
            WHERE t.entity_type = '{ENTITY_TYPE}' AND t.entity_id = k.i AND t.as_of_date = k.d AND t.model_id = k.m
              AND t.embedding_id < (SELECT max(x.embedding_id) FROM numeric_window_embeddings x
                                    WHERE x.entity_type = t.entity_type AND x.entity_id = t.entity_id
                                      AND x.as_of_date = t.as_of_date AND x.model_id = t.model_id)""",
        (ids, days, models),
    )


def current_row(conn: psycopg.Connection, instrument_id: str, as_of: date, model_id: str) -> tuple | None:
    """An instrument's stored row for (as_of, model): (created_at, window days, vector), or None."""
    return conn.execute(
        """SELECT created_at, (window_spec->>'window_days')::int, vector FROM numeric_window_embeddings
           WHERE entity_type = %s AND entity_id = %s AND as_of_date = %s AND model_id = %s
           ORDER BY embedding_id DESC LIMIT 1""",
        (ENTITY_TYPE, instrument_id, as_of, model_id),
    ).fetchone()
