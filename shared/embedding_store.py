"""Writing embeddings: binary COPY into a staging table, then one idempotent upsert.

Every path (the direct batch path and the stream's sink) writes through here,
so running anything twice never duplicates a row and never rewrites an
identical one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import psycopg

from shared.db import copy_rows, one

ENTITY_TYPE = "INSTRUMENT"
STAGING = "embeddings_staging"
STAGING_COLUMNS = ("entity_id", "as_of_date", "model_id", "window_days", "vector")
STAGING_TYPES = ("text", "date", "text", "int4", "bytea")


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
            window_days int4 NOT NULL, vector bytea NOT NULL)"""
    )


def upsert_embeddings(conn: psycopg.Connection, rows: Iterable[tuple | EmbeddingRow]) -> int:
    """Stage `rows` and upsert them in the caller's transaction; returns how many stored rows were
    inserted or changed (identical rewrites are skipped).

    Rows may be EmbeddingRow or plain tuples in STAGING_COLUMNS order; where a
    batch repeats a key, the last row wins (a correction emitted after the
    original). A key written here is no longer an absent one (`shared.maintained_keys`).
    The caller commits; on failure nothing of this batch is visible.
    """
    latest: dict[tuple, tuple] = {}
    for r in rows:
        t = (
            (r.entity_id, r.as_of_date, r.model_id, r.window_days, r.vector)
            if isinstance(r, EmbeddingRow)
            else tuple(r)
        )
        latest[(t[0], t[1], t[2])] = t
    with conn.cursor() as cur:
        ensure_staging(cur)
        cur.execute(f"TRUNCATE {STAGING}")
        # In key order (nearly free: every path produces rows per instrument and date), so concurrent
        # writers (the sink, the correction path) lock rows in one order.
        copy_rows(cur, STAGING, STAGING_COLUMNS, (latest[k] for k in sorted(latest)), STAGING_TYPES)
        cur.execute(
            f"""
            INSERT INTO numeric_window_embeddings AS t
                (entity_type, entity_id, window_spec, as_of_date, model_id, vector)
            SELECT '{ENTITY_TYPE}', entity_id, {window_spec_sql("window_days")}, as_of_date, model_id, vector
            FROM {STAGING}
            ON CONFLICT (entity_type, entity_id, as_of_date, model_id) DO UPDATE SET
                window_spec = EXCLUDED.window_spec, vector = EXCLUDED.vector, vector_ref = NULL
            WHERE (t.window_spec, t.vector, t.vector_ref) IS DISTINCT FROM
                  (EXCLUDED.window_spec, EXCLUDED.vector, NULL::varchar)
            """
        )
        changed = cur.rowcount
        ids = list({k[0] for k in latest})
        if one(
            cur.execute(
                f"""SELECT EXISTS (SELECT 1 FROM embedder_absent_embeddings
                                          WHERE entity_type = '{ENTITY_TYPE}' AND entity_id = ANY(%s))""",
                (ids,),
            )
        )[0]:  # the usual case: none of these instruments has absent keys
            cur.execute(
                f"""DELETE FROM embedder_absent_embeddings a USING {STAGING} s
                    WHERE a.entity_type = '{ENTITY_TYPE}' AND a.entity_id = s.entity_id
                      AND a.as_of_date = s.as_of_date AND a.model_id = s.model_id"""
            )
        return changed
