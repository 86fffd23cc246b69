"""`embedder prices import`: COPY valid rows into a staging table, then write them, a chunk at a time.

Everything happens in one transaction, so a failing file leaves nothing
half-written; where the input repeats an (instrument, date), the last valid
row wins; unchanged rows are not rewritten, so re-importing changes nothing.
The database writes a chunk while the next one is parsed (`ChunkWriter`), and
new keys are plain INSERTs: the import runs near the pace of a raw COPY.
"""
from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from backfill.price_files import ReadReport, read_price_records
from shared.db import connection, copy_rows
from shared.errors import BadArguments

STAGING = "prices_import_staging"
STAGING_COLUMNS = (
    "seq", "key", "key_is_id", "trade_date", "open", "high", "low", "close",
    "adjusted_close", "volume", "currency", "metadata",
)
STAGING_TYPES = (
    "int8", "text", "bool", "date", "float8", "float8", "float8", "float8",
    "float8", "float8", "text", "text",
)


@dataclass
class ImportResult:
    files: list[ReadReport] = field(default_factory=list)
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    new_instruments: int = 0

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def rejected(self) -> Counter:
        total: Counter = Counter()
        for f in self.files:
            total.update(f.rejected)
        return total


def check_paths(paths: Iterable[Path]) -> list[Path]:
    out = []
    for p in paths:
        if not p.is_file():
            raise BadArguments(f"no such file: {p}")
        out.append(p)
    if not out:
        raise BadArguments("no files given")
    return out


CHUNK_ROWS = 100_000
"""Rows staged and written per statement: the database writes one chunk while the next is parsed."""


def import_prices(
    database_url: str,
    paths: Iterable[Path],
    market_id: str = "US_EQ",
    currency: str = "USD",
    on_rows: Callable[[int], None] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> ImportResult:
    """Load price files into prices_daily, registering unknown symbols in `market_id`.

    One transaction: a failing file leaves nothing written. Parsing (Python) and writing (the
    database) overlap: a thread owns the connection and writes chunk after chunk, in file order, while
    this thread parses the next; a chunk written later overwrites an earlier one's rows, so the last
    valid row of a key still wins across chunks."""
    files = check_paths(paths)
    result = ImportResult()
    with connection(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            f"""CREATE TEMP TABLE {STAGING} (
                seq int8, key text, key_is_id bool, trade_date date, open float8, high float8,
                low float8, close float8, adjusted_close float8, volume float8, currency text,
                metadata text) ON COMMIT DROP"""
        )
        writer = ChunkWriter(cur, market_id, result)
        writer.start()
        try:
            seq = 0
            chunk: list[tuple] = []
            for path in files:
                report = ReadReport(path)
                result.files.append(report)
                for record in read_price_records(path, currency, report):
                    seq += 1
                    chunk.append((seq, *record))
                    if len(chunk) == chunk_rows:
                        writer.submit(chunk)
                        chunk = []
                    if on_rows and seq % 20_000 == 0:
                        on_rows(20_000)
            if chunk:
                writer.submit(chunk)
            if on_rows:
                on_rows(seq % 20_000)
        finally:
            writer.finish()
    return result


class ChunkWriter(threading.Thread):
    """Stages and writes chunks of parsed rows on the import's connection, in the order submitted (the
    only thread that uses the connection while it runs). The database works while the parser does:
    waiting on the server releases the GIL."""

    def __init__(self, cur: psycopg.Cursor, market_id: str, result: ImportResult):
        super().__init__(name="price-import-writer", daemon=True)
        self.cur, self.market_id, self.result = cur, market_id, result
        self.chunks: queue.Queue[list[tuple] | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while (chunk := self.chunks.get()) is not None:
                self.write(chunk)
        except BaseException as e:  # handed to the parsing thread, which raises it
            self.error = e

    def write(self, chunk: list[tuple]) -> None:
        cur = self.cur
        cur.execute(f"TRUNCATE {STAGING}")
        copy_rows(cur, STAGING, STAGING_COLUMNS, chunk, STAGING_TYPES)
        cur.execute(f"ANALYZE {STAGING}")
        self.result.new_instruments += _register_instruments(cur, self.market_id)
        inserted, updated, keys = _upsert_prices(cur, self.market_id)
        self.result.inserted += inserted
        self.result.updated += updated
        self.result.unchanged += keys - inserted - updated

    def submit(self, chunk: list[tuple]) -> None:
        while True:
            self._raise_error()
            try:
                self.chunks.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait for every chunk submitted; raise what the writer met."""
        while self.is_alive():
            try:
                self.chunks.put(None, timeout=0.5)
                break
            except queue.Full:
                continue
        self.join()
        self._raise_error()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def _register_instruments(cur, market_id: str) -> int:
    """Insert instruments for symbols (or ids) the market does not know yet."""
    cur.execute(
        f"""
        INSERT INTO instruments (instrument_id, market_id, asset_class, symbol, currency, status)
        SELECT s.key, %(market)s::varchar, 'EQUITY', s.key, min(s.currency), 'ACTIVE'
        FROM {STAGING} s
        WHERE NOT EXISTS (
            SELECT 1 FROM instruments i
            WHERE (s.key_is_id AND i.instrument_id = s.key)
               OR (NOT s.key_is_id AND i.market_id = %(market)s::varchar AND i.symbol = s.key)
        )
        GROUP BY s.key
        ON CONFLICT (instrument_id) DO NOTHING
        """,
        {"market": market_id},
    )
    return cur.rowcount


RESOLVED = f"""
        WITH mapped AS (
            SELECT COALESCE(CASE WHEN s.key_is_id THEN s.key END, m.instrument_id, s.key) AS instrument_id,
                   s.trade_date, s.open, s.high, s.low, s.close, s.adjusted_close, s.volume,
                   s.currency, s.metadata::jsonb AS metadata, s.seq
            FROM {STAGING} s
            LEFT JOIN (
                SELECT DISTINCT ON (i.symbol) i.symbol, i.instrument_id FROM instruments i
                WHERE i.market_id = %(market)s::varchar
                ORDER BY i.symbol, i.instrument_id
            ) m ON NOT s.key_is_id AND m.symbol = s.key
        ), resolved AS MATERIALIZED (
            SELECT DISTINCT ON (instrument_id, trade_date)
                   instrument_id, trade_date, open, high, low, close, adjusted_close, volume, currency, metadata
            FROM mapped
            ORDER BY instrument_id, trade_date, seq DESC
        )"""
"""The last valid row per (instrument, date) of the staged file, symbols mapped to the market's ids."""

def same_values(new: str) -> str:
    """SQL: the stored row `p` already holds the values of row `new`."""
    columns = ("open", "high", "low", "close", "adjusted_close", "volume", "currency", "metadata")
    return (f"({', '.join(f'p.{c}' for c in columns)}) IS NOT DISTINCT FROM "
            f"({', '.join(f'{new}.{c}' for c in columns)})")


def _upsert_prices(cur, market_id: str) -> tuple[int, int, int]:
    """Write the last valid row per (instrument, date); returns (inserted, updated, distinct keys).

    New keys are INSERTed plainly and existing ones UPDATEd where a value differs, in one statement
    (both see the table as it was before it): a plain INSERT costs what a COPY does, where an upsert
    pays a speculative insertion per row. A key another writer inserts meanwhile makes the plain INSERT
    fail; then the statement is run again as an upsert (INSERT ... ON CONFLICT)."""
    params = {"market": market_id}
    cur.execute("SAVEPOINT embedder_import")
    try:
        cur.execute(
            RESOLVED + f""",
            updated AS (
                UPDATE prices_daily AS p SET
                    open = r.open, high = r.high, low = r.low, close = r.close, adjusted_close = r.adjusted_close,
                    volume = r.volume, currency = r.currency, metadata = r.metadata
                FROM resolved r
                WHERE p.instrument_id = r.instrument_id AND p.trade_date = r.trade_date AND NOT {same_values("r")}
                RETURNING 1
            ), inserted AS (
                INSERT INTO prices_daily
                    (instrument_id, trade_date, open, high, low, close, adjusted_close, volume, currency, metadata)
                SELECT r.* FROM resolved r
                WHERE NOT EXISTS (SELECT 1 FROM prices_daily p
                                  WHERE p.instrument_id = r.instrument_id AND p.trade_date = r.trade_date)
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM updated), (SELECT count(*) FROM resolved)
            """, params)
        counts = cur.fetchone()
        cur.execute("RELEASE SAVEPOINT embedder_import")
    except psycopg.errors.UniqueViolation:
        cur.execute("ROLLBACK TO SAVEPOINT embedder_import")
        cur.execute(
            RESOLVED + f""",
            up AS (
                INSERT INTO prices_daily AS p
                    (instrument_id, trade_date, open, high, low, close, adjusted_close, volume, currency, metadata)
                SELECT * FROM resolved r
                ON CONFLICT (instrument_id, trade_date) DO UPDATE SET
                    open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
                    adjusted_close = EXCLUDED.adjusted_close, volume = EXCLUDED.volume,
                    currency = EXCLUDED.currency, metadata = EXCLUDED.metadata
                WHERE NOT {same_values("EXCLUDED")}
                RETURNING (xmax = 0) AS inserted
            )
            SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted),
                   (SELECT count(*) FROM resolved) FROM up
            """, params)
        counts = cur.fetchone()
    inserted, updated, keys = counts
    return int(inserted), int(updated), int(keys)
