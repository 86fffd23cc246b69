"""What keeping versions costs the writers, and how fast the consumer's exports are (issue 19).

- the batch path and the stream over a year of the real market, history on and off, alternating, on an
  empty table and again over it (nothing changes: the case that must cost nothing), medians; and one
  plain UPDATE changing every vector of the year (each superseded row kept: what a version costs);
- one as_of over the market and a year, exported to Parquet and .npy (and read by `read_embeddings`),
  against a plain `COPY (SELECT ...) TO STDOUT` of the same rows read whole (binary), best of 3 (a fresh
  connection each, as a command makes).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import psycopg

from backfill.direct import run_direct
from backfill.replay import run_stream_replay
from backfill.selection import RunSelection
from backfill.worker_process import worker_for_run
from embedder.embedding_files import write_embeddings
from shared.contract.config import Settings
from shared.store.embedding_history import switch_history
from shared.store.embedding_reads import EmbeddingQuery, iter_batches, read_embeddings, resolve

MODEL = "num-regime-core-v1"


def set_history(url: str, on: bool) -> None:
    with psycopg.connect(url) as conn:
        switch_history(conn, on, "benchmark")
        conn.commit()


def timed(fn, *args, **kwargs) -> float:
    import time

    started = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - started


def measure_writers(f, settings: Settings, year: tuple[str, str], rounds: int = 3) -> None:
    """Batch path and stream, history on vs off: fresh table, then the same run again (nothing changes)."""
    url = settings.database_url
    selection = RunSelection.build(
        window_days=63, model_ids=[MODEL], date_from=year[0], date_to=year[1], market_id="US_EQ"
    )
    times: dict[str, list[float]] = {}
    with worker_for_run(settings):
        for _ in range(rounds):
            for on in (True, False):
                label = "on" if on else "off"
                set_history(url, on)
                for path, run in (
                    ("direct", lambda: run_direct(url, selection)),
                    ("stream", lambda: run_stream_replay(settings, selection, topics_exist=True)),
                ):
                    with psycopg.connect(url) as conn:
                        conn.execute("DELETE FROM numeric_window_embeddings")
                        conn.execute("TRUNCATE numeric_window_embedding_versions")
                        conn.commit()
                    times.setdefault(f"{path}_empty_history_{label}", []).append(timed(run))
                    times.setdefault(f"{path}_again_history_{label}", []).append(timed(run))
    # When everything changes: one plain UPDATE of every vector of the year (each row kept as a version).
    for _ in range(rounds):
        for on in (True, False):
            set_history(url, on)
            with psycopg.connect(url) as conn:
                conn.execute("TRUNCATE numeric_window_embedding_versions")
                conn.commit()
                first_byte = bytes([_ % 2 + 1 if on else _ % 2 + 3])  # differs from the last run's

                def flip(c: psycopg.Connection = conn, b: bytes = first_byte) -> None:
                    c.execute(
                        "UPDATE numeric_window_embeddings SET vector = overlay(vector placing %s from 1 for 1)", (b,)
                    )
                    c.commit()

                times.setdefault(f"update_every_row_history_{'on' if on else 'off'}", []).append(timed(flip))
    f.put("history_update_every_row_rows", count_embeddings(url))
    set_history(url, True)
    for key, values in sorted(times.items()):
        f.put(f"history_{key}_s", round(statistics.median(values), 2))
    on, off = (statistics.median(times[f"update_every_row_history_{x}"]) for x in ("on", "off"))
    f.put("history_update_every_row_on_vs_off", round(on / off, 3))
    for path in ("direct", "stream"):
        for case in ("empty", "again"):
            on, off = (statistics.median(times[f"{path}_{case}_history_{x}"]) for x in ("on", "off"))
            f.put(f"history_{path}_{case}_on_vs_off", round(on / off, 3))


def count_embeddings(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM numeric_window_embeddings").fetchone()[0]


def copy_seconds(url: str, query: EmbeddingQuery) -> tuple[int, float]:
    """A plain binary COPY of the same rows, read whole: (bytes, seconds)."""
    import time

    started = time.perf_counter()
    n = 0
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(
            """COPY (SELECT entity_id, as_of_date, window_spec, vector FROM numeric_window_embeddings
                         WHERE entity_type = 'INSTRUMENT' AND model_id = %s AND as_of_date BETWEEN %s AND %s
                         ORDER BY as_of_date, entity_id) TO STDOUT (FORMAT BINARY)""",
            (query.model_id, query.date_from, query.date_to),
        ) as copy:
            for block in copy:
                n += len(block)
    return n, time.perf_counter() - started


def measure_exports(f, url: str, year: tuple[str, str], rounds: int = 3) -> None:
    """Exports of one as_of and of a year against COPY TO of the same rows (best of `rounds`)."""
    run_direct(
        url,
        RunSelection.build(window_days=63, model_ids=[MODEL], date_from=year[0], date_to=year[1], market_id="US_EQ"),
    )
    out = Path(tempfile.mkdtemp(prefix="embedder-export-"))
    with psycopg.connect(url) as conn:  # the year's last trading day
        day = conn.execute("SELECT max(trade_date) FROM prices_daily WHERE trade_date <= %s", (year[1],)).fetchone()[0]
    for label, query in (
        ("one_as_of", resolve(url, EmbeddingQuery.build(MODEL, as_of=day), "US_EQ")),
        ("year", resolve(url, EmbeddingQuery.build(MODEL, date_from=year[0], date_to=year[1]), "US_EQ")),
    ):
        best: dict[str, float] = {}
        for _ in range(rounds):
            best["copy"] = min(best.get("copy", 1e9), copy_seconds(url, query)[1])
            for fmt in ("parquet", "npy"):
                best[fmt] = min(
                    best.get(fmt, 1e9),
                    timed(lambda q=query, f=fmt: write_embeddings(iter_batches(url, q), out / f"e.{f}", f, MODEL)),
                )
            best["read_embeddings"] = min(
                best.get("read_embeddings", 1e9),
                timed(
                    read_embeddings,
                    MODEL,
                    date_from=query.date_from,
                    date_to=query.date_to,
                    market_id="US_EQ",
                    database_url=url,
                ),
            )
        rows = len(
            read_embeddings(
                MODEL, date_from=query.date_from, date_to=query.date_to, market_id="US_EQ", database_url=url
            )
        )
        f.put(f"export_{label}_rows", rows)
        for key, seconds in best.items():
            f.put(f"export_{label}_{key}_s", round(seconds, 3))
        for key in ("parquet", "npy", "read_embeddings"):
            f.put(f"export_{label}_{key}_vs_copy_speed", round(best["copy"] / best[key], 2))
