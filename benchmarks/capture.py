"""What capture costs the platform's own writes (issue 17), in a database of its own.

- the platform's bulk `COPY prices_daily FROM STDIN` of the whole real data set (CSV), with capture on
  against the same COPY without the triggers (and with capture switched off);
- a day of 5,000 instruments' INSERTs, as one statement and as 5,000 one-row statements (pipelined:
  the harshest case for a per-statement trigger), with and without capture;
- the outbox's bytes per captured row after the COPY;
- `embedder prices import` of the real data set file against a raw COPY of the same rows.

Runs alternate (off, on, off, on, ...) and the medians are compared, so drift of the machine hits
both sides alike.
"""

from __future__ import annotations

import io
import statistics
import time
from datetime import date, timedelta
from pathlib import Path

import psycopg

from backfill.price_files import ReadReport, read_price_file
from backfill.price_import import import_prices

COLUMNS = "instrument_id, trade_date, open, high, low, close, adjusted_close, volume, currency"
DAY_INSTRUMENTS = 5_000
Mode = str  # "none" (no capture triggers), "off" (triggers, capture switched off), "on"


def prices_csv(path: Path) -> tuple[bytes, int]:
    """The data set's valid rows (last row of a key wins) in prices_daily's own layout, as the
    platform's bulk load would send them."""
    last = {}
    for r in read_price_file(path, "USD", ReadReport(path)):
        last[(r.key, r.trade_date)] = r
    buf = io.StringIO()
    for r in last.values():
        buf.write(
            f"{r.key},{r.trade_date},{r.open!r},{r.high!r},{r.low!r},{r.close!r},{r.adjusted_close!r},"
            f"{r.volume!r},{r.currency}\n"
        )
    return buf.getvalue().encode(), len(last)


def set_mode(conn: psycopg.Connection, mode: Mode) -> None:
    conn.execute(f"ALTER TABLE prices_daily {'DISABLE' if mode == 'none' else 'ENABLE'} TRIGGER USER")
    conn.execute("UPDATE embedder_capture SET enabled = %s, idle_hours = NULL, relay_seen_at = now()", (mode == "on",))


def copy_seconds(url: str, data: bytes, mode: Mode) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE prices_daily, prices_outbox")
        set_mode(conn, mode)
        conn.execute("CHECKPOINT")
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY prices_daily ({COLUMNS}) FROM STDIN (FORMAT csv)") as copy:
            for start in range(0, len(data), 1 << 20):
                copy.write(data[start : start + (1 << 20)])
        conn.commit()
        return time.perf_counter() - started


def day_seconds(url: str, day: date, mode: Mode, one_statement: bool) -> float:
    rows = [(f"DAY{k:05d}", day, 10.0, 10.5, 9.5, 10.2, 10.2, 1000.0 + k, "USD") for k in range(DAY_INSTRUMENTS)]
    with psycopg.connect(url, autocommit=True) as conn:
        set_mode(conn, mode)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        if one_statement:
            cur.execute(
                f"""INSERT INTO prices_daily ({COLUMNS})
                            SELECT * FROM unnest(%s::text[], %s::date[], %s::float8[], %s::float8[], %s::float8[],
                                                 %s::float8[], %s::float8[], %s::float8[], %s::text[])""",
                [list(col) for col in zip(*rows)],
            )
        else:
            cur.executemany(f"INSERT INTO prices_daily ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
        conn.commit()
        return time.perf_counter() - started


def measure_capture(f, url: str, data_path: Path, copies: int = 3, days: int = 9) -> None:
    """Put the figures into `f` (benchmarks.bench.Figures)."""
    data, rows = prices_csv(data_path)
    f.put("capture_copy_rows", rows)
    runs: dict[Mode, list[float]] = {"none": [], "off": [], "on": []}
    for _ in range(copies):
        for mode in ("none", "on", "off"):
            runs[mode].append(copy_seconds(url, data, mode))
    copy_none, copy_on = statistics.median(runs["none"]), statistics.median(runs["on"])
    f.put("platform_copy_without_capture_s", round(copy_none, 2))
    f.put("platform_copy_with_capture_s", round(copy_on, 2))
    f.put("platform_copy_capture_switched_off_s", round(statistics.median(runs["off"]), 2))
    f.put("platform_copy_capture_ratio", round(copy_on / copy_none, 3))

    copy_seconds(url, data, "on")
    with psycopg.connect(url) as conn:
        entries, outbox_bytes, prices_bytes = conn.execute(
            """SELECT count(*), pg_total_relation_size('prices_outbox'), pg_total_relation_size('prices_daily')
               FROM prices_outbox"""
        ).fetchone()
    f.put("outbox_entries_after_copy", entries)
    f.put("outbox_bytes_per_captured_row", round(outbox_bytes / rows, 2))
    f.put("outbox_bytes_vs_prices_bytes", round(outbox_bytes / prices_bytes, 4))

    day = date(2031, 1, 1)
    for one_statement, name in ((True, "one_statement"), (False, "row_statements")):
        timings: dict[Mode, list[float]] = {"none": [], "on": []}
        for _ in range(days):
            for mode in ("none", "on"):
                day += timedelta(days=1)
                timings[mode].append(day_seconds(url, day, mode, one_statement))
        none, on = statistics.median(timings["none"]), statistics.median(timings["on"])
        f.put(f"day_insert_{name}_without_capture_ms", round(none * 1000, 1))
        f.put(f"day_insert_{name}_with_capture_ms", round(on * 1000, 1))
        f.put(f"day_insert_{name}_capture_ratio", round(on / none, 3))

    imports, raw = [], []
    for _ in range(copies):
        raw.append(copy_seconds(url, data, "off"))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE prices_daily, prices_outbox, instruments CASCADE")
            set_mode(conn, "off")
        started = time.perf_counter()
        import_prices(url, [data_path])
        imports.append(time.perf_counter() - started)
    f.put("raw_copy_of_import_rows_s", round(statistics.median(raw), 2))
    f.put("import_s", round(statistics.median(imports), 2))
    f.put("import_vs_raw_copy_speed", round(statistics.median(raw) / statistics.median(imports), 3))
