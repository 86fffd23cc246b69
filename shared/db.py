"""Database access: connections with secret-free errors, and the COPY + upsert helper."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg import sql

from shared.config import redact_url, scrub_secret
from shared.errors import ServiceUnavailable


def connect(url: str, *, autocommit: bool = False, connect_timeout: int = 10) -> psycopg.Connection:
    """A psycopg connection; failures raise ServiceUnavailable without the password."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=connect_timeout)
    except psycopg.Error as e:
        first_line = scrub_secret(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, url)
        raise ServiceUnavailable(f"cannot connect to PostgreSQL at {redact_url(url)}: {first_line}") from None


@contextmanager
def connection(url: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """`connect` as a context manager that always closes."""
    conn = connect(url, autocommit=autocommit)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def copy_rows(
    cur: psycopg.Cursor,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    types: Sequence[str] | None = None,
) -> None:
    """COPY `rows` into `table`; binary format when `types` are given (faster, exact)."""
    stmt = sql.SQL("COPY {} ({}) FROM STDIN{}").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(" (FORMAT BINARY)" if types else ""),
    )
    with cur.copy(stmt) as copy:
        if types:
            copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)
