"""A platform database as users have it: SPEC section 2 tables made with plain SQL, years of prices
loaded with plain INSERTs before this project was installed (so no capture trigger saw them)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from datetime import date

import psycopg

from backfill.synthetic import synthetic_rows
from tests.support.cli import EMBEDDER

PLATFORM_DDL = """
CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
INSERT INTO alembic_version VALUES ('3f2a9c1b7d10');
CREATE TABLE instruments (
    instrument_id varchar(50) PRIMARY KEY, issuer_id varchar(50), market_id varchar(50),
    asset_class varchar(50) NOT NULL, symbol varchar(50) NOT NULL, exchange varchar(50),
    currency varchar(10) NOT NULL, multiplier float8, maturity_date date, underlying_instrument_id varchar(50),
    status varchar(20) NOT NULL DEFAULT 'ACTIVE', metadata jsonb,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE prices_daily (
    instrument_id varchar(50), trade_date date, open float8 NOT NULL, high float8 NOT NULL, low float8 NOT NULL,
    close float8 NOT NULL, adjusted_close float8 NOT NULL, volume float8 NOT NULL, currency varchar(10) NOT NULL,
    metadata jsonb, PRIMARY KEY (instrument_id, trade_date));
CREATE TABLE numeric_window_embeddings (
    embedding_id bigserial PRIMARY KEY, entity_type varchar(32) NOT NULL, entity_id varchar(64) NOT NULL,
    window_spec jsonb NOT NULL, as_of_date date NOT NULL, model_id varchar(64) NOT NULL, vector bytea,
    vector_ref varchar(255), created_at timestamptz NOT NULL DEFAULT now());
"""

INSERT_PRICE = """INSERT INTO prices_daily (instrument_id, trade_date, open, high, low, close, adjusted_close, volume,
                                         currency) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'USD')"""


def create_platform_database(database_factory) -> str:
    """An empty platform database (no migrations of this project)."""
    url = database_factory("platform")
    with psycopg.connect(url) as conn:
        conn.execute(PLATFORM_DDL)
    return url


def add_instruments(
    url: str, ids: Iterable[str], market_id: str = "US_EQ", asset_class: str = "EQUITY", status: str = "ACTIVE"
) -> None:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO instruments (instrument_id, market_id, asset_class, symbol, currency, status)
                           VALUES (%s, %s, %s, %s, 'USD', %s)""",
            [(i, market_id, asset_class, i[:50], status) for i in ids],
        )


def market_history(ids: list[str], start: date, end: date, seed: int = 5) -> list[tuple]:
    """(instrument_id, trade_date, close, volume) of a synthetic market (gaps, late listings, short
    histories), the k-th synthetic symbol renamed to ids[k]; in trade_date order."""
    names = {f"SYN{k:03d}": i for k, i in enumerate(ids)}
    out = []
    for d, _high, _low, _open, close, volume, _adj, symbol in synthetic_rows(len(ids), start, end, seed):
        out.append((names[symbol], date.fromisoformat(d), float(close), float(volume)))
    return out


def insert_prices(conn: psycopg.Connection, rows: Iterable[tuple]) -> None:
    """The platform's own ingestion: plain INSERT statements (open/high/low derived from close)."""
    with conn.cursor() as cur:
        cur.executemany(INSERT_PRICE, [(i, d, c, c * 1.01, c * 0.99, c, c, v) for i, d, c, v in rows])


def upgrade(env: dict[str, str]) -> str:
    proc = subprocess.run(
        EMBEDDER + ["db", "upgrade"], env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def selectable(url: str, market_id: str = "US_EQ") -> list[str]:
    """The market selection of SPEC section 2."""
    with psycopg.connect(url) as conn:
        return [
            r[0]
            for r in conn.execute(
                """SELECT instrument_id FROM instruments WHERE market_id = %s AND asset_class = 'EQUITY'
               AND status = 'ACTIVE' ORDER BY instrument_id""",
                (market_id,),
            )
        ]
