"""Tick commits recorded in one statement per kind of delivery leave what recording them one at a time leaves,
also where one sink transaction holds the same tick twice (a tick re-delivered before its first output was
acknowledged). Against the real database."""

from __future__ import annotations

import itertools
from datetime import date

import psycopg
import pytest

from shared.store.tick_commits import record_tick_commits

DAY = date(2021, 3, 4)


def commit(p: int, e: int, i: int, again: bool, m: int = 0, x: int = 0) -> dict:
    return {"run": "replay-t", "scope": "", "p": p, "d": DAY, "e": e, "i": i, "m": m, "x": x, "again": again}


def stored(conn: psycopg.Connection, p: int) -> tuple:
    return conn.execute(
        """SELECT embeddings, insufficient, missing_today, rows_missing FROM embedder_tick_commits
           WHERE run_id = 'replay-t' AND source_partition = %s""",
        (p,),
    ).fetchone()


DELIVERIES = [
    commit(0, 5, 2, False, 1),
    commit(0, 3, 4, True, 2),
    commit(0, 7, 1, True, 3, 1),
    commit(0, 1, 9, False, 4),
]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4), 3)))
def test_a_transaction_of_repeated_ticks_leaves_what_one_at_a_time_leaves(db_url, order):
    sequence = [DELIVERIES[k] for k in order]
    with psycopg.connect(db_url) as conn:
        with conn.cursor() as cur:
            record_tick_commits(cur, [commit(1, 4, 4, False)])  # stored before: partition 1 in one statement,
            record_tick_commits(cur, [commit(2, 4, 4, False)])  # partition 2 one at a time
            record_tick_commits(cur, [d | {"p": 1} for d in sequence])
            for d in sequence:
                record_tick_commits(cur, [d | {"p": 2}])
        assert stored(conn, 1) == stored(conn, 2)


def test_a_redelivered_tick_never_lowers_its_counts(db_url):
    with psycopg.connect(db_url) as conn:
        with conn.cursor() as cur:
            record_tick_commits(cur, [commit(0, 5, 2, False), commit(3, 6, 0, False)])
            record_tick_commits(cur, [commit(0, 3, 4, True), commit(3, 9, 0, False)])
        assert stored(conn, 0) == (5, 2, 0, 0) and stored(conn, 3) == (9, 0, 0, 0)
