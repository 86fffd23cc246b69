"""`embedder prices import`: COPY valid rows into a staging table, then one upsert.

Everything happens in one transaction, so a failing file leaves nothing
half-written; where the input repeats an (instrument, date), the last valid
row wins; unchanged rows are not rewritten, so re-importing changes nothing.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from backfill.price_files import ReadReport, read_price_file
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


def import_prices(
    database_url: str,
    paths: Iterable[Path],
    market_id: str = "US_EQ",
    currency: str = "USD",
    on_rows: Callable[[int], None] | None = None,
) -> ImportResult:
    """Load price files into prices_daily, registering unknown symbols in `market_id`."""
    files = check_paths(paths)
    result = ImportResult()
    with connection(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            f"""CREATE TEMP TABLE {STAGING} (
                seq int8, key text, key_is_id bool, trade_date date, open float8, high float8,
                low float8, close float8, adjusted_close float8, volume float8, currency text,
                metadata text) ON COMMIT DROP"""
        )
        seq = 0
        for path in files:
            report = ReadReport(path)
            result.files.append(report)

            def staged_rows():
                nonlocal seq
                for row in read_price_file(path, currency, report):
                    seq += 1
                    if on_rows and seq % 20_000 == 0:
                        on_rows(20_000)
                    yield (
                        seq, row.key, row.key_is_id, row.trade_date, row.open, row.high, row.low,
                        row.close, row.adjusted_close, row.volume, row.currency, row.metadata,
                    )

            copy_rows(cur, STAGING, STAGING_COLUMNS, staged_rows(), STAGING_TYPES)
        if on_rows:
            on_rows(seq % 20_000)
        cur.execute(f"ANALYZE {STAGING}")
        result.new_instruments = _register_instruments(cur, market_id)
        result.inserted, result.updated = _upsert_prices(cur, market_id)
        valid_unique = cur.execute(f"SELECT count(*) FROM (SELECT DISTINCT key, key_is_id, trade_date FROM {STAGING}) s").fetchone()[0]
        result.unchanged = valid_unique - result.inserted - result.updated
    return result


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


def _upsert_prices(cur, market_id: str) -> tuple[int, int]:
    """Upsert the last valid row per (instrument, date); returns (inserted, updated)."""
    cur.execute(
        f"""
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
        ), resolved AS (
            SELECT DISTINCT ON (instrument_id, trade_date)
                   instrument_id, trade_date, open, high, low, close, adjusted_close, volume, currency, metadata
            FROM mapped
            ORDER BY instrument_id, trade_date, seq DESC
        ), up AS (
            INSERT INTO prices_daily AS p
                (instrument_id, trade_date, open, high, low, close, adjusted_close, volume, currency, metadata)
            SELECT * FROM resolved
            ON CONFLICT (instrument_id, trade_date) DO UPDATE SET
                open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
                adjusted_close = EXCLUDED.adjusted_close, volume = EXCLUDED.volume,
                currency = EXCLUDED.currency, metadata = EXCLUDED.metadata
            WHERE (p.open, p.high, p.low, p.close, p.adjusted_close, p.volume, p.currency, p.metadata)
                  IS DISTINCT FROM
                  (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.adjusted_close,
                   EXCLUDED.volume, EXCLUDED.currency, EXCLUDED.metadata)
            RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up
        """,
        {"market": market_id},
    )
    inserted, updated = cur.fetchone()
    return int(inserted), int(updated)
