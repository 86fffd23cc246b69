"""The table kept exact (issue 16), measured on the real data set: `verify` over the whole table against
`replay --direct`, the time from an old correction to its last recomputed embedding (one row; 1,000 rows
across 100 instruments), and live ticks while a large restatement is being recomputed."""

from __future__ import annotations

import statistics
import time
from datetime import date
from pathlib import Path

import psycopg

from backfill.direct import run_direct
from backfill.selection import RunSelection
from backfill.verify import VerifySelection, verify
from benchmarks.live import start_worker, stop, tick_latencies, wait_bootstrapped, wait_ready, withhold_days
from shared.contract.config import Settings

MODEL = "num-regime-core-v1"


def settled(conn: psycopg.Connection) -> bool:
    return conn.execute("""SELECT NOT EXISTS (SELECT 1 FROM prices_outbox WHERE published_at IS NULL)
                              AND NOT EXISTS (SELECT 1 FROM embedder_recompute_queue)""").fetchone()[0]


def until_settled(url: str, timeout: float = 1800.0) -> float:
    """Seconds until every captured change is published and recomputed (the commit of the last one)."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        while not settled(conn):
            if time.perf_counter() - started > timeout:
                raise RuntimeError("corrections not recomputed in time")
            time.sleep(0.01)
    return time.perf_counter() - started


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.99 * len(values)) - 1)]


def measure_exact(f, settings: Settings, days: list[date], workdir: Path, ticks: int = 20) -> None:
    url = settings.database_url
    selection = RunSelection.build(
        window_days=63, model_ids=[MODEL], date_from="2015-01-01", date_to="2020-12-31", market_id="US_EQ"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE numeric_window_embeddings, embedder_absent_embeddings")
    started = time.perf_counter()
    run_direct(url, selection)
    direct_s = time.perf_counter() - started
    f.put("exact_direct_seconds", round(direct_s, 2))
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        report = verify(
            conn,
            VerifySelection(
                date_from=date(2015, 1, 1), date_to=date(2020, 12, 31), market_id="US_EQ", model_ids=(MODEL,)
            ),
        )
        verify_s = time.perf_counter() - started
    assert report.equal, report.as_dict()
    f.put("verify_keys", report.keys)
    f.put("verify_seconds", round(verify_s, 2))
    f.put("verify_keys_per_s", round(report.keys / verify_s))
    f.put("verify_vs_direct_speed", round(direct_s / verify_s, 2))

    # The live service on the same table: history no trigger saw, the last days withheld for live ticks.
    measured = days[-2 * ticks :]
    withhold_days(url, measured[0])
    datadir = workdir / "exact"
    datadir.mkdir(parents=True, exist_ok=True)
    worker = start_worker(settings, datadir)
    try:
        wait_ready(datadir)
        wait_bootstrapped(settings, url)
        # Capture turned on for the first time: every stored key is rechecked once, in the background.
        f.put("exact_first_capture_recheck_s", round(until_settled(url), 2))
        quiet = tick_latencies(settings, url, measured[:ticks], MODEL)
        f.put("exact_quiet_tick_p50_s", round(statistics.median(quiet), 3))
        f.put("exact_quiet_tick_p99_s", round(p99(quiet), 3))
        until_settled(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("""UPDATE prices_daily SET close = close * 1.01 WHERE instrument_id = 'AAPL'
                            AND trade_date = '2016-03-01'""")
        f.put("correction_1_row_to_last_embedding_s", round(until_settled(url), 3))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("""UPDATE prices_daily p SET close = close * 1.02 FROM (
                                SELECT instrument_id, trade_date, row_number() OVER (PARTITION BY instrument_id
                                                                                     ORDER BY trade_date) AS n
                                FROM prices_daily WHERE instrument_id IN (
                                    SELECT instrument_id FROM prices_daily
                                    WHERE trade_date BETWEEN '2016-06-01' AND '2016-12-31'
                                    GROUP BY instrument_id HAVING count(*) >= 120 ORDER BY instrument_id LIMIT 100)
                                  AND trade_date BETWEEN '2016-06-01' AND '2016-12-31') k
                            WHERE p.instrument_id = k.instrument_id AND p.trade_date = k.trade_date
                              AND k.n % 12 = 0 AND k.n <= 120""")
            rows = conn.execute("SELECT count(*) FROM embedder_outbox_changes WHERE published_at IS NULL").fetchone()[0]
        f.put("correction_restatement_rows", rows)
        f.put("correction_restatement_to_last_embedding_s", round(until_settled(url), 3))
        with psycopg.connect(url, autocommit=True) as conn:  # a large restatement: every close of 2016
            large = conn.execute("""UPDATE prices_daily SET close = close * 0.995
                                    WHERE trade_date BETWEEN '2016-01-01' AND '2016-12-31'""").rowcount
        started = time.perf_counter()
        busy = tick_latencies(settings, url, measured[ticks:], MODEL)
        with psycopg.connect(url, autocommit=True) as conn:
            queued_after_ticks = conn.execute("SELECT count(*) FROM embedder_recompute_queue").fetchone()[0]
        f.put("large_restatement_rows", large)
        f.put("large_restatement_queued_after_ticks", queued_after_ticks)
        f.put("exact_busy_tick_p50_s", round(statistics.median(busy), 3))
        f.put("exact_busy_tick_p99_s", round(p99(busy), 3))
        # The first tick is queued behind every row the restatement captured (a tick never overtakes
        # rows committed before it): it waits for the relay to read them, not for their recomputation.
        f.put("exact_busy_first_tick_s", round(busy[0], 3))
        f.put("exact_busy_later_ticks_p99_s", round(p99(busy[1:]), 3))
        until_settled(url)
        seconds = time.perf_counter() - started
        f.put("large_restatement_seconds", round(seconds, 1))
        f.put("large_restatement_rows_per_s", round(large / seconds))
    finally:
        stop(worker)
    with psycopg.connect(url) as conn:
        report = verify(conn, VerifySelection(market_id="US_EQ", model_ids=(MODEL,)))
    f.put("exact_after_restatements_equal", report.equal)
