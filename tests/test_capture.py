"""Capture that costs the platform little (issue 17), on real PostgreSQL: the switch, key-only entries
that name exactly the changed keys, the relay's reading of them from prices_daily, and the resync a
gap asks for. (The worker end to end: tests/test_exact_table.py, test_live_service.py.)"""

from __future__ import annotations

from datetime import date, timedelta

import psycopg

from live.bootstrap import enqueue_tick, fallen_short, read_snapshot
from live.capture import capture_state, heartbeat, start_capture, stop_capture
from shared.store.outbox import captured_rows, outbox_backlog
from tests.support.platform import insert_prices

D1, D2, D3 = date(2020, 1, 2), date(2020, 1, 3), date(2020, 1, 6)


def captured(conn: psycopg.Connection) -> list[tuple[str, date]]:
    """Every (instrument, date) the outbox names, in entry order, then key order within an entry."""
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT instrument_id, trade_date FROM embedder_outbox_changes ORDER BY id, instrument_id, trade_date"
        )
    ]


def entries(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM prices_outbox").fetchone()[0]


def off(conn: psycopg.Connection) -> None:
    """As on a database where the live service was never enabled."""
    conn.execute("UPDATE embedder_capture SET enabled = false, relay_seen_at = NULL")


def test_nothing_is_captured_until_the_live_service_is_enabled(db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        off(conn)
        assert not capture_state(conn).capturing
        insert_prices(conn, [("A", D1, 10.0, 100.0), ("B", D1, 20.0, 200.0)])
        conn.execute("UPDATE prices_daily SET close = close + 1")
        conn.execute("DELETE FROM prices_daily WHERE instrument_id = 'B'")
        assert entries(conn) == 0 and outbox_backlog(conn).entries == 0

        start_capture(conn, 72.0, "test")
        assert capture_state(conn).capturing
        insert_prices(conn, [("A", D2, 11.0, 110.0)])
        assert captured(conn) == [("A", D2)]

        assert stop_capture(conn, "test") and not capture_state(conn).capturing
        insert_prices(conn, [("A", D3, 12.0, 120.0)])
        assert captured(conn) == [("A", D2)]  # off again: the new row was not captured


def test_entries_name_exactly_the_changed_keys_grouped_per_statement(db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        start_capture(conn, None, "test")
        # A day of 300 instruments in one statement: one entry.
        day = [(f"I{k:03d}", D1, 10.0 + k, 1000.0) for k in range(300)]
        with conn.cursor() as cur:
            cur.execute(
                """INSERT INTO prices_daily (instrument_id, trade_date, open, high, low, close, adjusted_close,
                           volume, currency)
                           SELECT i, d, c, c, c, c, c, v, 'USD' FROM unnest(%s::text[], %s::date[], %s::float8[],
                                                                            %s::float8[]) AS r(i, d, c, v)""",
                [list(col) for col in zip(*day)],
            )
        assert entries(conn) == 1 and sorted(captured(conn)) == sorted((i, d) for i, d, _, _ in day)
        # History of two instruments over the same dates, one of a third on other dates: two entries.
        conn.execute("TRUNCATE prices_outbox")
        with conn.cursor() as cur:
            cur.execute("""INSERT INTO prices_daily (instrument_id, trade_date, open, high, low, close, adjusted_close,
                           volume, currency)
                           SELECT i, d, 1, 1, 1, 1, 1, 1, 'USD'
                           FROM unnest(ARRAY['H1', 'H2']) AS i, generate_series(date '2019-01-01', date '2019-03-31',
                                                                                interval '1 day') AS d
                           UNION ALL SELECT 'H3', date '2019-02-01', 1, 1, 1, 1, 1, 1, 'USD'""")
        assert entries(conn) == 2 and len(captured(conn)) == 2 * 90 + 1
        # An UPDATE: only the keys whose close or volume changed, and the old key of a moved row.
        conn.execute("TRUNCATE prices_outbox")
        conn.execute("UPDATE prices_daily SET open = open + 1 WHERE instrument_id = 'I000'")  # no input changed
        conn.execute("UPDATE prices_daily SET close = close * 2 WHERE instrument_id IN ('I001', 'I002')")
        conn.execute("UPDATE prices_daily SET trade_date = %s WHERE instrument_id = 'I003'", (D2,))  # a key moved
        assert captured(conn) == [("I001", D1), ("I002", D1), ("I003", D1), ("I003", D2)]
        # A DELETE.
        conn.execute("TRUNCATE prices_outbox")
        conn.execute("DELETE FROM prices_daily WHERE instrument_id = 'H3'")
        assert captured(conn) == [("H3", date(2019, 2, 1))]
        backlog = outbox_backlog(conn)
        assert (backlog.entries, backlog.keys) == (1, 1) and backlog.bytes > 0 and backlog.oldest_seconds >= 0


def test_the_relay_reads_captured_keys_as_prices_daily_holds_them_now(db_url):
    """Rows where a key has one, deletions where it has none (deleted since, or never there)."""
    with psycopg.connect(db_url) as conn:
        insert_prices(conn, [("A", D1, 10.0, 100.0), ("B", D2, 20.0, 200.0)])
        entry = conn.execute(
            """INSERT INTO prices_outbox (kind, instrument_ids, trade_dates) VALUES ('keys', %s, %s) RETURNING id""",
            (["B", "A", "A"], [D2, D1]),
        ).fetchone()[0]
        parts = list(captured_rows(conn, entry))
    assert parts == [[("A", D1, 10.0, 100.0), ("B", D1), ("A", D2), ("B", D2, 20.0, 200.0)]]


def test_capture_lapses_without_a_relay_and_a_gap_resyncs_from_prices_daily(db_url):
    """After the idle limit without a relay the triggers capture nothing; the next relay finds the gap:
    every maintained key is queued for a recheck and the live windows are loaded again, with deletions
    of what they may hold that prices_daily no longer has."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        off(conn)
        conn.execute("""INSERT INTO instruments (instrument_id, market_id, asset_class, symbol, currency, status)
                        VALUES ('A', 'US_EQ', 'EQUITY', 'A', 'USD', 'ACTIVE')""")
        assert start_capture(conn, 1.0, "test") is not None  # never on before: a gap (nothing to recheck yet)
        insert_prices(conn, [("A", D1, 10.0, 100.0), ("A", D3, 11.0, 100.0)])
        conn.execute("UPDATE embedder_bootstrap SET published_at = now(), rows = 2")  # the windows were loaded
        conn.execute(
            """INSERT INTO numeric_window_embeddings (entity_type, entity_id, window_spec, as_of_date, model_id,
                        vector) VALUES ('INSTRUMENT', 'A', '{"window_days": 63}', %s, 'num-regime-core-v1', '\\x00')""",
            (D3,),
        )
        assert heartbeat(conn, 1.0, "test") is None  # a relay within the limit: nothing to do
        conn.execute("UPDATE embedder_capture SET relay_seen_at = now() - interval '2 hours'")
        assert not capture_state(conn).capturing and capture_state(conn).describe.startswith("lapsed")
        before = entries(conn)
        conn.execute("DELETE FROM prices_daily WHERE trade_date = %s", (D1,))
        assert entries(conn) == before  # lapsed: not captured
        enqueue_tick(conn, D3, 63, ["num-regime-core-v1"])  # `embedder tick` while no worker runs

        resynced = heartbeat(conn, 1.0, "test")
        assert resynced is not None and (resynced.instruments, resynced.keys) == (1, 1)
        assert capture_state(conn).capturing
        assert conn.execute("SELECT instrument_id, trade_date FROM embedder_recompute_queue").fetchall() == [("A", D3)]
        (entry,) = conn.execute("SELECT outbox_id FROM embedder_bootstrap WHERE resync").fetchone()
        (tick,) = conn.execute("SELECT id FROM prices_outbox WHERE kind = 'tick'").fetchone()
        assert tick > entry  # the waiting tick moved behind the reloading snapshot
        loaded = read_snapshot(conn, entry, keep_days=10, today=D3 + timedelta(days=1))
    rows = [r for r in loaded if len(r) == 4]
    gone = {r[1] for r in loaded if len(r) == 2}
    assert rows == [("A", D3, 11.0, 100.0)]
    assert D1 in gone and D3 not in gone  # the row deleted during the gap leaves the window


def test_a_live_window_short_of_prices_daily_is_named_for_loading_again(db_url):
    days = [D1 + timedelta(days=k) for k in range(10)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM prices_daily WHERE instrument_id IN ('A', 'B', 'C')")
        insert_prices(conn, [("A", d, 10.0 + k, 100.0) for k, d in enumerate(days)])
        insert_prices(conn, [("B", d, 20.0, 200.0) for d in days[-2:]])  # listed two days ago
        # A's window lost rows it had (3 held of 10); B's and C's hold what the table does
        assert fallen_short(conn, days[0], days[-1], {"A": 3, "B": 2, "C": 0}) == ["A"]
        assert fallen_short(conn, days[-3], days[-1], {"A": 3, "B": 2}) == []  # a look-back it holds whole
