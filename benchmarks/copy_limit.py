"""The limit: a raw binary COPY of the same embeddings into an empty copy of the table."""

from __future__ import annotations

import time

import psycopg

from shared.store.db import copy_rows

COLUMNS = ("entity_type", "entity_id", "window_spec", "as_of_date", "model_id", "vector")
TYPES = ("varchar", "varchar", "jsonb", "date", "varchar", "bytea")


def raw_copy_seconds(url: str) -> tuple[int, float]:
    """(rows, seconds) to COPY every stored embedding into an empty twin of the table (rows are read
    into memory first, so only the write is timed)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM numeric_window_embeddings").fetchall()
        conn.execute("DROP TABLE IF EXISTS bench_copy_limit")
        conn.execute("CREATE TABLE bench_copy_limit (LIKE numeric_window_embeddings INCLUDING ALL)")
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur:
            copy_rows(cur, "bench_copy_limit", COLUMNS, rows, TYPES)
        conn.commit()
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE bench_copy_limit")
        conn.commit()
    return len(rows), elapsed
