"""The database's record of what was computed, on real PostgreSQL with no broker: which keys a change
reaches, the correction path's queue under a concurrent change, absent keys, the state format record."""

from __future__ import annotations

from datetime import date, timedelta

import psycopg
import pytest

import live.corrections as corrections
from live.bootstrap import reconcile_state_format
from live.corrections import drain_once
from shared.store.embedding_store import upsert_embeddings
from shared.store.maintained_keys import MaintainedKey, affected_keys, queue_recompute, record_absent
from tests.support.helpers import expected_from_rows, stored
from tests.support.platform import add_instruments, insert_prices

MODEL = "num-regime-core-v1"
D = date(2020, 6, 1)


def test_a_change_reaches_the_keys_whose_own_window_holds_it(db_url):
    vec = b"\x00" * 1536
    rows = [("X", D + timedelta(days=k), MODEL, 63, vec) for k in (-1, 0, 100, 189, 190)] + [
        ("X", D + timedelta(days=400), MODEL, 150, vec),
        ("X", D + timedelta(days=451), MODEL, 150, vec),
        ("Y", D, MODEL, 63, vec),
    ]
    with psycopg.connect(db_url) as conn:
        upsert_embeddings(conn, rows)
        record_absent(conn, [("X", D + timedelta(days=5), "numeric-simple-v1", 63)])
        conn.execute(
            """INSERT INTO numeric_window_embeddings (entity_type, entity_id, window_spec, as_of_date,
                                                               model_id, vector)
                        VALUES ('INSTRUMENT', 'X', '{"entity_type": "INSTRUMENT"}', %s, %s, ''),
                               ('INSTRUMENT', 'X', '{"window_days": 63}', %s, 'legacy-model-v0', '')""",
            (D + timedelta(days=3), MODEL, D + timedelta(days=4)),
        )
        keys = affected_keys(conn, [("X", D)])
    assert keys == sorted(
        [MaintainedKey("X", D + timedelta(days=k), MODEL, 63) for k in (0, 100, 189)]
        + [
            MaintainedKey("X", D + timedelta(days=5), "numeric-simple-v1", 63),
            MaintainedKey("X", D + timedelta(days=400), MODEL, 150),
        ]
    )  # not the row without a window, nor Y's


def test_a_change_queued_again_while_it_is_recomputed_stays_queued(db_url, monkeypatch):
    add_instruments(db_url, ["X"])
    with psycopg.connect(db_url) as conn:
        insert_prices(conn, [("X", D - timedelta(days=k), 10.0 + k, 100.0) for k in range(120)])
        record_absent(conn, [("X", D, MODEL, 63)])  # asked for before the history was there
        queue_recompute(conn, [("X", D - timedelta(days=3))])
    real = corrections.rewrite_keys

    def with_a_concurrent_change(conn, keys):
        with psycopg.connect(db_url, autocommit=True) as other:  # the relay, committing meanwhile
            queue_recompute(other, [("X", D - timedelta(days=3))])
        return real(conn, keys)

    monkeypatch.setattr(corrections, "rewrite_keys", with_a_concurrent_change)
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = drain_once(conn)
        assert first.changes == 1 and first.rewritten.changed == 1  # the absent key now has its history
        monkeypatch.setattr(corrections, "rewrite_keys", real)
        assert conn.execute("SELECT count(*) FROM embedder_recompute_queue").fetchone()[0] == 1
        again = drain_once(conn)
        assert again.changes == 1 and again.rewritten.changed == 0  # nothing new, nothing rewritten
        assert drain_once(conn).changes == 0
        assert conn.execute("SELECT count(*) FROM embedder_absent_embeddings").fetchone()[0] == 0
        rows = conn.execute("SELECT instrument_id, trade_date, close, volume FROM prices_daily").fetchall()
    assert stored(db_url) == expected_from_rows(rows, ["X"], [D], 63, [MODEL])


def test_a_new_layout_generation_rebuilds_the_live_windows_with_waiting_ticks_behind_the_loads(db_url):
    """After `embedder live repartition`: the worker of the new generation queues every instrument for
    loading and moves the ticks waiting in the outbox behind those loads."""
    from live.bootstrap import enqueue_tick

    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO instruments (instrument_id, market_id, asset_class, symbol, currency) "
            "VALUES ('Y', 'US_EQ', 'EQUITY', 'Y', 'USD') ON CONFLICT DO NOTHING"
        )
        assert reconcile_state_format(conn, "gen", 3, 0) is None
        conn.execute(
            "INSERT INTO embedder_bootstrap (instrument_id, outbox_id, published_at, rows) VALUES ('Y', 1, now(), 10)"
        )
        waiting = enqueue_tick(conn, D, 63, [MODEL])
        assert reconcile_state_format(conn, "gen", 3, 0) is None  # the same generation: nothing to do
        assert reconcile_state_format(conn, "gen", 3, 1) == 3
        loads = conn.execute("SELECT max(outbox_id), count(*), count(published_at) FROM embedder_bootstrap").fetchone()
        assert loads[1] >= 1 and loads[2] == 0
        tick = conn.execute("SELECT id FROM prices_outbox WHERE kind = 'tick' AND trade_date = %s", (D,)).fetchone()[0]
        assert tick > loads[0] and tick != waiting  # behind every load
        assert conn.execute("SELECT generation FROM embedder_state_format WHERE app_id = 'gen'").fetchone()[0] == 1


@pytest.mark.parametrize("recorded", [None, 1])
def test_a_worker_meeting_another_state_format_rebuilds_the_live_windows(db_url, recorded):
    with psycopg.connect(db_url) as conn:
        assert reconcile_state_format(conn, "first", 2) is None  # a first start: nothing was loaded
        conn.execute(
            "INSERT INTO embedder_bootstrap (instrument_id, outbox_id, published_at, rows) VALUES ('X', 1, now(), 10)"
        )
        assert reconcile_state_format(conn, "first", 2) is None  # the same format: nothing to do
        if recorded is not None:
            conn.execute("UPDATE embedder_state_format SET version = %s", (recorded,))
            app = "first"
        else:
            app = "lost-changelogs"  # a new app id where windows were loaded before
        assert reconcile_state_format(conn, app, 2) == (recorded or 0)
        assert conn.execute("SELECT count(published_at) FROM embedder_bootstrap").fetchone()[0] == 0  # loaded again
        assert conn.execute("SELECT version FROM embedder_state_format WHERE app_id = %s", (app,)).fetchone()[0] == 2
