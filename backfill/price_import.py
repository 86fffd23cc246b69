"""`embedder prices import`: parse blocks of the files in parallel, write each as a COPY.

Everything happens in one transaction, so a failing file leaves nothing
half-written; where the input repeats an (instrument, date), the last valid
row wins; unchanged rows are not rewritten, so re-importing changes nothing.
Processes parse the blocks ahead (`backfill.price_blocks`) while this one writes
them in file order: a block of new keys (new days, new history) is one plain
COPY into prices_daily, any other is staged and upserted. The import runs near
the pace of a raw COPY of the same rows.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from backfill.price_blocks import ParsedBlock, parse_block
from backfill.price_files import ReadReport, open_price_file, text_blocks
from shared.contract.errors import BadArguments
from shared.store.db import connection, one

STAGING = "prices_import_staging"
PRICE_COLUMNS = ("instrument_id", "trade_date", "open", "high", "low", "close", "adjusted_close", "volume", "currency")


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


BLOCK_CHARS = 4 << 20
"""Characters of the file per parsed block (about 50,000 rows of a Yahoo file)."""
PARSE_PROCESSES = 2
AHEAD = 4
"""Blocks parsed ahead of the one being written (memory stays bounded)."""
STAGED_ROWS = 500_000
"""Rows staged before they are upserted together (an upsert joins the whole table: fewer is cheaper)."""


def import_prices(
    database_url: str,
    paths: Iterable[Path],
    market_id: str = "US_EQ",
    currency: str = "USD",
    on_rows: Callable[[int], None] | None = None,
    block_chars: int = BLOCK_CHARS,
) -> ImportResult:
    """Load price files into prices_daily, registering unknown symbols in `market_id`.

    One transaction: a failing file leaves nothing written. Blocks of each file are parsed by a pool of
    processes while this one writes the blocks before them, in file order; a block written later
    overwrites an earlier one's rows, so the last valid row of a key still wins across blocks."""
    files = check_paths(paths)
    result = ImportResult()
    small = sum(p.stat().st_size * (5 if p.suffix == ".gz" else 1) for p in files) < block_chars
    with Inline() if small else parse_pool() as pool, connection(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            f"""CREATE TEMP TABLE {STAGING} (
                seq bigserial, key text, key_is_id bool, trade_date date, open float8, high float8,
                low float8, close float8, adjusted_close float8, volume float8, currency text,
                metadata text) ON COMMIT DROP"""
        )
        seq = 0
        writer = BlockWriter(cur, market_id, result)
        for path in files:
            report = ReadReport(path)
            result.files.append(report)
            spec, f = open_price_file(path, currency)
            with f:
                if spec is None:
                    continue
                pending: deque[Future] = deque()
                blocks = text_blocks(f, block_chars)
                while True:
                    while len(pending) < AHEAD and (text := next(blocks, None)) is not None:
                        pending.append(pool.submit(parse_block, text, seq, spec))
                        seq += text.count("\n") + 1  # at least the block's rows: numbers stay in file order
                    if not pending:
                        break
                    block = pending.popleft().result()
                    report.rows += block.rows
                    report.valid += block.valid
                    report.rejected.update(block.rejected)
                    writer.write(block)
                    if on_rows:
                        on_rows(block.rows)
            writer.flush()
    return result


def parse_pool() -> ProcessPoolExecutor:
    """Parse processes, forked and started before the import connects (no child holds its socket)."""
    pool = ProcessPoolExecutor(PARSE_PROCESSES, mp_context=multiprocessing.get_context("fork"))
    for started in [pool.submit(int) for _ in range(PARSE_PROCESSES)]:
        started.result()
    return pool


class Inline(contextlib.AbstractContextManager):
    """The pool's interface, parsing in this process (a small import spawns no process)."""

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def __exit__(self, *exc) -> None:
        return None


class BlockWriter:
    """Writes parsed blocks in file order. A block of new keys (none of its instruments has a row in its
    dates: new days, new history — the usual import) is one plain COPY into prices_daily; any other is
    staged, and the staged rows are upserted together (at most STAGED_ROWS at a time, and before the
    next direct COPY or file, so the last valid row of a key still wins)."""

    def __init__(self, cur: psycopg.Cursor, market_id: str, result: ImportResult):
        self.cur, self.market_id, self.result = cur, market_id, result
        self.staged_rows = 0

    def write(self, block: ParsedBlock) -> None:
        if not block.valid:
            return
        cur = self.cur
        self.result.new_instruments += register_instruments(cur, self.market_id, block.keys)
        if not block.staged and direct_possible(cur, self.market_id, block):
            if self.staged_rows:  # staged keys are not in the table yet: write them, then judge again
                self.flush()
            if direct_possible(cur, self.market_id, block):
                cur.execute("SAVEPOINT embedder_import_copy")
                try:
                    copy_text(cur, f"prices_daily ({', '.join(PRICE_COLUMNS)})", block.csv)
                except psycopg.errors.UniqueViolation:  # a key a concurrent writer inserted meanwhile
                    cur.execute("ROLLBACK TO SAVEPOINT embedder_import_copy")
                else:
                    cur.execute("RELEASE SAVEPOINT embedder_import_copy")
                    self.result.inserted += block.lines
                    return
        self.stage(block)
        if self.staged_rows >= STAGED_ROWS:
            self.flush()

    def stage(self, block: ParsedBlock) -> None:
        cur = self.cur
        if not self.staged_rows:
            cur.execute(f"TRUNCATE {STAGING}")
        if block.staged:
            copy_text(cur, STAGING, block.csv)
        else:  # one row per key: seq from the staging sequence, key_is_id from the file
            key_is_id = next(iter(block.keys))[1]
            cur.execute(f"ALTER TABLE {STAGING} ALTER COLUMN key_is_id SET DEFAULT {'true' if key_is_id else 'false'}")
            copy_text(cur, f"{STAGING} (key, {', '.join(PRICE_COLUMNS[1:])})", block.csv)
        self.staged_rows += block.lines

    def flush(self) -> None:
        """Upsert what is staged."""
        if not self.staged_rows:
            return
        self.cur.execute(f"ANALYZE {STAGING}")
        inserted, updated, keys = _upsert_prices(self.cur, self.market_id)
        self.result.inserted += inserted
        self.result.updated += updated
        self.result.unchanged += keys - inserted - updated
        self.staged_rows = 0


def copy_text(cur: psycopg.Cursor, target: str, text: str) -> None:
    with cur.copy(f"COPY {target} FROM STDIN (FORMAT csv)") as copy:
        copy.write(text)


def direct_possible(cur: psycopg.Cursor, market_id: str, block: ParsedBlock) -> bool:
    """Every key is its own instrument id (the market maps each symbol to itself, as registering it
    does) and prices_daily holds no row of the block's instruments within the block's dates."""
    symbols = sorted(k for k, is_id in block.keys if not is_id)
    if (
        symbols
        and one(
            cur.execute(
                """SELECT EXISTS (SELECT 1 FROM (SELECT DISTINCT ON (symbol) symbol, instrument_id FROM instruments
                                             WHERE market_id = %s AND symbol = ANY(%s)
                                             ORDER BY symbol, instrument_id) m
                              WHERE m.instrument_id <> m.symbol)""",
                (market_id, symbols),
            )
        )[0]
    ):
        return False
    ids = list(block.spans)
    return not one(
        cur.execute(
            """SELECT EXISTS (SELECT 1 FROM unnest(%s::text[], %s::date[], %s::date[]) AS s(i, lo, hi)
                          JOIN prices_daily p ON p.instrument_id = s.i AND p.trade_date BETWEEN s.lo AND s.hi)""",
            (ids, [block.spans[i][0] for i in ids], [block.spans[i][1] for i in ids]),
        )
    )[0]


def register_instruments(cur, market_id: str, currencies: dict[tuple[str, bool], str]) -> int:
    """Insert instruments for symbols (or ids) the market does not know yet; `currencies` maps
    (key, key_is_id) to the currency it is registered with."""
    if not currencies:
        return 0
    cur.execute(
        """
        INSERT INTO instruments (instrument_id, market_id, asset_class, symbol, currency, status)
        SELECT s.key, %(market)s::varchar, 'EQUITY', s.key, min(s.currency), 'ACTIVE'
        FROM unnest(%(keys)s::text[], %(is_id)s::bool[], %(currencies)s::text[]) AS s(key, key_is_id, currency)
        WHERE NOT EXISTS (
            SELECT 1 FROM instruments i
            WHERE (s.key_is_id AND i.instrument_id = s.key)
               OR (NOT s.key_is_id AND i.market_id = %(market)s::varchar AND i.symbol = s.key)
        )
        GROUP BY s.key
        ON CONFLICT (instrument_id) DO NOTHING
        """,
        {
            "market": market_id,
            "keys": [k for k, _ in currencies],
            "is_id": [i for _, i in currencies],
            "currencies": list(currencies.values()),
        },
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
    return f"({', '.join(f'p.{c}' for c in columns)}) IS NOT DISTINCT FROM ({', '.join(f'{new}.{c}' for c in columns)})"


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
            RESOLVED
            + f""",
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
            """,
            params,
        )
        counts = cur.fetchone()
        cur.execute("RELEASE SAVEPOINT embedder_import")
    except psycopg.errors.UniqueViolation:
        cur.execute("ROLLBACK TO SAVEPOINT embedder_import")
        cur.execute(
            RESOLVED
            + f""",
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
            """,
            params,
        )
        counts = cur.fetchone()
    inserted, updated, keys = counts
    return int(inserted), int(updated), int(keys)
