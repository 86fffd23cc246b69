"""Instrument selection, in one place: which instruments a market holds, how a market is cut, and each
instrument's newest trade date (SPEC section 2).

A market's instruments are its ACTIVE EQUITY rows of `instruments`, in `ORDER BY instrument_id` under
the database's own collation (ICU `en-US` orders `a-b`, `A_B` and `ab` unlike Python's code points).
So the cut by `--limit/--offset` is always made here, in SQL, and every other path (the batch path,
the replay, live queries, the worker's registry, the bootstrap, the tick schedule) takes these ids or
this order as given; nothing re-sorts ids in Python to cut a market.
"""

from __future__ import annotations

from datetime import date

import psycopg

from shared.store.db import one

SELECTABLE = "asset_class = 'EQUITY' AND status = 'ACTIVE'"
"""The SQL condition of an instrument a market selection takes (columns of `instruments`)."""


def newest_trade_date_sql(alias: str, bound: str) -> str:
    """SQL for the newest trade date of instrument `alias.instrument_id` on or before `bound` (an SQL
    expression: a parameter or a column), NULL without rows."""
    return (
        f"(SELECT max(p.trade_date) FROM prices_daily p "
        f"WHERE p.instrument_id = {alias}.instrument_id AND p.trade_date <= {bound})"
    )


def market_cut(conn: psycopg.Connection, market_id: str, limit: int | None = None, offset: int = 0) -> list[str]:
    """The market's selectable ids in the database's order, cut by offset/limit."""
    rows = conn.execute(
        f"""SELECT instrument_id FROM instruments
            WHERE market_id = %s AND {SELECTABLE}
            ORDER BY instrument_id LIMIT %s OFFSET %s""",
        (market_id, limit, offset),
    ).fetchall()
    return [r[0] for r in rows]


def registry_rows(conn: psycopg.Connection, ids: list[str] | None = None) -> list[tuple[str, str | None, bool]]:
    """(instrument_id, market_id, selectable) of every instrument (or of `ids`), in the database's order:
    the worker's registry keeps this order, so its market cuts equal `market_cut`."""
    return conn.execute(
        f"""SELECT instrument_id, market_id, {SELECTABLE} FROM instruments
            WHERE %(ids)s::text[] IS NULL OR instrument_id = ANY(%(ids)s::text[])
            ORDER BY instrument_id""",
        {"ids": ids},
    ).fetchall()


def registry_fingerprint(conn: psycopg.Connection) -> tuple:
    """What `registry_rows` would return, summed up in the database: equal fingerprints, equal rows (the
    order is the ids' own). Lets the worker skip reading every instrument before each live tick."""
    return one(
        conn.execute(
            f"""SELECT count(*), sum(hashtextextended(instrument_id || chr(31) || coalesce(market_id, chr(30))
                                                  || chr(31) || coalesce(({SELECTABLE})::text, chr(30)), 0))
            FROM instruments"""
        )
    )


def newest_trade_date(
    conn: psycopg.Connection, latest: date, market_id: str | None = None, ids: list[str] | None = None
) -> date | None:
    """The newest trade date on or before `latest` among the selectable instruments of a market (or of
    `ids`, selectable or not)."""
    return one(
        conn.execute(
            f"""SELECT max({newest_trade_date_sql("i", "%(latest)s")}) FROM instruments i
            WHERE (%(ids)s::text[] IS NOT NULL AND i.instrument_id = ANY(%(ids)s::text[]))
               OR (%(ids)s::text[] IS NULL AND i.market_id = %(m)s AND {SELECTABLE})""",
            {"latest": latest, "m": market_id, "ids": ids},
        )
    )[0]


def trade_dates_between(conn: psycopg.Connection, ids: list[str], date_from: date, date_to: date) -> list[date]:
    """The distinct trade dates of `ids` in [date_from, date_to]: the as_of dates of a range selection."""
    return [
        r[0]
        for r in conn.execute(
            """SELECT DISTINCT trade_date FROM prices_daily
           WHERE instrument_id = ANY(%s) AND trade_date BETWEEN %s AND %s ORDER BY trade_date""",
            (ids, date_from, date_to),
        )
    ]
