"""`shared.store.db.copy_rows` in binary: every bytes-like vector arrives byte for byte, by the C dumper of bytes."""

from __future__ import annotations

import psycopg
from psycopg.pq import Format

from shared.store.db import copy_rows

BYTEA = 17


def test_binary_copy_writes_bytes_like_values_exactly_with_the_c_dumper_of_bytes(db_url):
    values = [b"\x00\x01\xff", bytearray(b"\x80" * 1000), memoryview(b"abc"), b""]
    with psycopg.connect(db_url) as conn:
        conn.execute("CREATE TEMP TABLE copied (k int4, v bytea)")
        with conn.cursor() as cur:
            copy_rows(cur, "copied", ("k", "v"), list(enumerate(values)), ("int4", "bytea"))
            dumper = cur.adapters.get_dumper_by_oid(BYTEA, Format.BINARY)
        assert conn.execute("SELECT v FROM copied ORDER BY k").fetchall() == [(bytes(v),) for v in values]
    # Python's own dumpers are in psycopg's modules; psycopg_binary's are compiled.
    assert dumper.__module__.startswith("psycopg_binary"), dumper
