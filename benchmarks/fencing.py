"""What fenced writes cost, and what the parity audit covers for its CPU (issue 26).

- The batch path over a year of the real market with the fenced upsert against the previous release's
  statement (kept here verbatim as `legacy_*`), alternating, medians: on an empty table, and again over it
  (nothing changes). Reported beside: the first run again after the relay numbered a new round (every
  identical row records the newer claim: what a rerun costs after live activity).
- A live tick's sink transaction (one as_of over the market, new keys) fenced against legacy, medians.
- The audit: keys checked per second by its sweep (worker and PostgreSQL, wall time on 2 shared cores), the
  time one round takes with the default settings, and so the share of a core for a whole-table pass every
  `parity_sweep_hours` at this table size and at 1,000,000 keys.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from unittest import mock

import psycopg

import backfill.direct as direct
import streams.sink as sink
from backfill.direct import run_direct
from backfill.selection import RunSelection
from live.parity_audit import ParityAudit, check_keys, sweep_keys
from shared.contract.config import Settings
from shared.store.db import copy_rows
from shared.store.embedding_store import (
    ENTITY_TYPE,
    STAGING,
    STAGING_COLUMNS,
    STAGING_TYPES,
    WriteResult,
    ensure_staging,
    window_spec_sql,
)
from shared.store.maintained_keys import ABSENT_STAGING
from shared.store.write_claims import next_round
from streams.output import Embedding, EmbeddingBatch, TickDone
from streams.sink import SinkWriter

MODEL = "num-regime-core-v1"


def legacy_write_embeddings(
    conn: psycopg.Connection,
    rows: Iterable[tuple],
    claim: int | None = None,
    one_per_key: bool = False,
    upserting: AbstractContextManager[object] | None = None,
) -> WriteResult:
    """The upsert of the release before issue 26 (no claim, no fence), on the same staging table (it takes
    `write_embeddings`' arguments; its rows are de-duplicated either way)."""
    latest = {(r[0], r[1], r[2]): (*tuple(r)[:5], None) for r in rows}
    with conn.cursor() as cur:
        ensure_staging(cur)
        cur.execute(f"TRUNCATE {STAGING}")
        copy_rows(cur, STAGING, STAGING_COLUMNS, (latest[k] for k in sorted(latest)), STAGING_TYPES)
        with upserting or nullcontext():
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
        exists = cur.execute(
            f"""SELECT EXISTS (SELECT 1 FROM embedder_absent_embeddings
                                      WHERE entity_type = '{ENTITY_TYPE}' AND entity_id = ANY(%s))""",
            (ids,),
        ).fetchone()
        if exists and exists[0]:
            cur.execute(
                f"""DELETE FROM embedder_absent_embeddings a USING {STAGING} s
                    WHERE a.entity_type = '{ENTITY_TYPE}' AND a.entity_id = s.entity_id
                      AND a.as_of_date = s.as_of_date AND a.model_id = s.model_id"""
            )
    return WriteResult(changed, 0)


def legacy_write_absent(conn: psycopg.Connection, keys: Iterable[tuple], claim: int | None = None) -> WriteResult:
    """The absent record of the release before issue 26 (no claim, no fence), on the same staging table."""
    latest = {(k[0], k[1], k[2]): (*tuple(k)[:4], None) for k in keys}
    if not latest:
        return WriteResult()
    with conn.cursor() as cur:
        cur.execute(f"""CREATE TEMP TABLE IF NOT EXISTS {ABSENT_STAGING} (
                            entity_id text NOT NULL, as_of_date date NOT NULL, model_id text NOT NULL,
                            window_days int4 NOT NULL, computed_from int8)""")
        cur.execute(f"TRUNCATE {ABSENT_STAGING}")
        copy_rows(
            cur,
            ABSENT_STAGING,
            ("entity_id", "as_of_date", "model_id", "window_days", "computed_from"),
            latest.values(),
            ("text", "date", "text", "int4", "int8"),
        )
        cur.execute(
            f"""INSERT INTO embedder_absent_embeddings AS a (entity_type, entity_id, as_of_date, model_id, window_days)
                SELECT '{ENTITY_TYPE}', entity_id, as_of_date, model_id, window_days FROM {ABSENT_STAGING}
                ORDER BY entity_id, as_of_date, model_id
                ON CONFLICT (entity_type, entity_id, as_of_date, model_id) DO UPDATE
                    SET window_days = EXCLUDED.window_days, recorded_at = now()
                    WHERE a.window_days <> EXCLUDED.window_days"""
        )
        cur.execute(
            f"""DELETE FROM numeric_window_embeddings t USING {ABSENT_STAGING} s
                WHERE t.entity_type = '{ENTITY_TYPE}' AND t.entity_id = s.entity_id
                  AND t.as_of_date = s.as_of_date AND t.model_id = s.model_id"""
        )
        return WriteResult(cur.rowcount, 0)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure_batch_path(f, url: str, selection: RunSelection, rounds: int = 5) -> None:
    times: dict[str, list[float]] = {}
    for k in range(rounds):
        for label in ("fenced", "legacy") if k % 2 == 0 else ("legacy", "fenced"):  # neither always first
            patches = (
                [
                    mock.patch.object(direct, "write_embeddings", legacy_write_embeddings),
                    mock.patch.object(direct, "write_absent", legacy_write_absent),
                ]
                if label == "legacy"
                else []
            )
            for p in patches:
                p.start()
            try:
                clear(url)
                times.setdefault(f"direct_empty_{label}", []).append(timed(lambda: run_direct(url, selection)))
                times.setdefault(f"direct_again_{label}", []).append(timed(lambda: run_direct(url, selection)))
            finally:
                for p in patches:
                    p.stop()
    with psycopg.connect(url) as conn:  # live activity since: the relay numbered a round
        next_round(conn)
    times["direct_again_after_a_round_fenced"] = [timed(lambda: run_direct(url, selection))]
    for key, values in sorted(times.items()):
        f.put(f"fencing_{key}_s", round(statistics.median(values), 2))
    for case in ("empty", "again"):
        fenced, legacy = (statistics.median(times[f"direct_{case}_{x}"]) for x in ("fenced", "legacy"))
        f.put(f"fencing_direct_{case}_fenced_vs_legacy", round(fenced / legacy, 3))


def clear(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE numeric_window_embeddings, numeric_window_embedding_versions, embedder_absent_embeddings"
        )


def measure_tick_transaction(f, url: str, year: tuple[str, str], ticks: int = 20) -> None:
    """The sink's transaction of one live tick over the market (new keys), fenced against legacy."""
    with psycopg.connect(url) as conn, conn.cursor(binary=True) as cur:
        cur.execute(
            """SELECT as_of_date, entity_id, vector FROM numeric_window_embeddings
               WHERE model_id = %s AND as_of_date BETWEEN %s AND %s ORDER BY as_of_date DESC, entity_id""",
            (MODEL, *year),
        )
        by_day: dict = {}
        for day, i, v in cur:
            by_day.setdefault(day, []).append(Embedding(i, day, MODEL, bytes(v)))
    days = sorted(by_day)[-ticks:]
    times: dict[str, list[float]] = {"fenced": [], "legacy": []}
    writer = SinkWriter(url)
    try:
        for day in days:
            for label in ("fenced", "legacy"):
                with psycopg.connect(url) as conn:
                    conn.execute("DELETE FROM numeric_window_embeddings WHERE as_of_date = %s", (day,))
                batch = EmbeddingBatch(
                    "live", 63, 0, by_day[day], (TickDone(day, len(by_day[day])),), scope="*", computed_from=1 << 40
                )
                patch = (
                    mock.patch.object(sink, "write_embeddings", legacy_write_embeddings) if label == "legacy" else None
                )
                if patch:
                    patch.start()
                try:
                    times[label].append(timed(lambda b=batch: writer.write_once([b])))
                finally:
                    if patch:
                        patch.stop()
    finally:
        writer.close()
    f.put("fencing_tick_keys", len(by_day[days[-1]]))
    for label, values in times.items():
        f.put(f"fencing_tick_transaction_{label}_ms", round(1000 * statistics.median(values), 1))
    f.put(
        "fencing_tick_fenced_vs_legacy",
        round(statistics.median(times["fenced"]) / statistics.median(times["legacy"]), 3),
    )


def measure_audit(f, settings: Settings, rounds: int = 3) -> None:
    """The sweep's rate, and one default round's time, over the year written by the batch path."""
    url = settings.database_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE numeric_window_embeddings")
        total = conn.execute("SELECT count(*) FROM numeric_window_embeddings").fetchone()[0]
        conn.execute("UPDATE prices_outbox SET published_at = now() WHERE published_at IS NULL")
        started, checked = time.perf_counter(), 0
        while checked < min(total, 20_000):
            keys = sweep_keys(conn, 2_000)
            checked += check_keys(conn, keys)[1]
        rate = checked / (time.perf_counter() - started)
        audit = ParityAudit(settings)
        round_seconds = statistics.median(timed(lambda: audit.round(conn)) for _ in range(rounds))
    period, hours = settings.parity_audit_seconds, settings.parity_sweep_hours
    f.put("audit_table_keys", total)
    f.put("audit_sweep_keys_per_s", round(rate))
    f.put("audit_round_default_s", round(round_seconds, 3))
    f.put("audit_round_share_of_a_core", round(round_seconds / period, 4))
    for label, keys in (("table", total), ("1m", 1_000_000)):
        share = keys / (hours * 3600.0) / rate
        f.put(f"audit_sweep_{label}_every_{hours:g}h_share_of_a_core", round(share, 4))


def measure_fencing(f, settings: Settings, year: tuple[str, str]) -> None:
    selection = RunSelection.build(
        window_days=63, model_ids=[MODEL], date_from=year[0], date_to=year[1], market_id="US_EQ"
    )
    measure_batch_path(f, settings.database_url, selection)
    measure_tick_transaction(f, settings.database_url, year)
    run_direct(settings.database_url, selection)
    measure_audit(f, settings)
