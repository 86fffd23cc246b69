"""Database access: connections with secret-free errors, and the COPY + upsert helper."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.types.string import BytesBinaryDumper

from shared.contract.config import redact_url, scrub_secret
from shared.contract.errors import EmbedderError, ServiceUnavailable

T = TypeVar("T")
log = logging.getLogger("embedder.db")


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


def one(result: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The row of a query that always returns one (an aggregate, a RETURNING, a singleton table): typed, and a
    clear error rather than a TypeError if it ever returns none."""
    row = result.fetchone()
    if row is None:
        raise EmbedderError("the database returned no row where one was certain (was the schema changed by hand?)")
    return row


class PatientReader:
    """One autocommit connection for a worker's reads, re-made after a failure: `read` retries with
    backoff while PostgreSQL is away (a restart must not crash the stream). Not thread-safe."""

    def __init__(self, url: str, what: str, max_backoff: float = 10.0):
        self.url = url
        self.what = what
        self.max_backoff = max_backoff
        self._conn: psycopg.Connection | None = None

    def read(self, query: Callable[[psycopg.Connection], T]) -> T:
        delay = 0.2
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.url, autocommit=True)
                return query(self._conn)
            except (psycopg.OperationalError, psycopg.InterfaceError, ServiceUnavailable) as e:
                log.warning("%s failed (%s); retrying in %.1fs", self.what, str(e).splitlines()[0], delay)
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)


def copy_rows(
    cur: psycopg.Cursor,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    types: Sequence[str] | None = None,
) -> None:
    """COPY `rows` into `table`; binary format when `types` are given (faster, exact; bytea values bytes-like)."""
    stmt = sql.SQL("COPY {} ({}) FROM STDIN{}").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(" (FORMAT BINARY)" if types else ""),
    )
    if types and "bytea" in types:
        # By type name, psycopg takes the last dumper registered for bytea: dbapi20's `Binary` one, Python code per
        # row (0.26 us each, 0.15 CPU-s of a whole replay). Bytes are what is written: their own dumper is C.
        cur.adapters.register_dumper(bytes, BytesBinaryDumper)
    with cur.copy(stmt) as copy:
        if types:
            copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)
