"""The whole maintained table against SPEC section 3 over the prices as they are: every stored key and every
key recorded absent, byte for byte (the chaos run's and the correction process's end check)."""

from __future__ import annotations

import psycopg

from tests.support.reference import reference_embedding


def whole_table(url: str) -> tuple[dict[tuple, bytes], dict[tuple, bytes]]:
    """(what is stored, what SPEC section 3 over prices_daily now says) for every maintained key: every stored
    row (with its own window) and every key recorded absent."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """SELECT entity_id, as_of_date, model_id, (window_spec ->> 'window_days')::int, vector
               FROM numeric_window_embeddings"""
        ).fetchall()
        absent = conn.execute(
            "SELECT entity_id, as_of_date, model_id, window_days FROM embedder_absent_embeddings"
        ).fetchall()
        prices: dict[str, list] = {}
        for i, d, c, v in conn.execute("SELECT instrument_id, trade_date, close, volume FROM prices_daily"):
            prices.setdefault(i, []).append((d, c, v))
    got = {(i, d, m): bytes(v) for i, d, m, _, v in rows}
    want = {}
    for i, d, m, window in [r[:4] for r in rows] + absent:
        vector = reference_embedding(prices.get(i, []), d, window, m)
        if vector is not None:
            want[(i, d, m)] = vector
    return got, want


def settled(url: str) -> bool:
    """Every captured change published and every queued recomputation done."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            """SELECT NOT EXISTS (SELECT 1 FROM prices_outbox WHERE published_at IS NULL)
                  AND NOT EXISTS (SELECT 1 FROM embedder_recompute_queue)"""
        ).fetchone()[0]


def exact(url: str) -> bool:
    """Settled, and the whole table equals the reference."""
    if not settled(url):
        return False
    got, want = whole_table(url)
    return got == want
