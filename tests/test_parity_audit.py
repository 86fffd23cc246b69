"""The parity audit finds a few stale keys among many (issue 26): where a stale key is likely — rewritten
lately, reached by a recent price change — and a sweep that covers the whole table in bounded time. On
real PostgreSQL, no broker."""

from __future__ import annotations

from datetime import date, timedelta

import psycopg

from backfill.recompute import rewrite_keys
from live.parity_audit import ParityAudit, sweep_keys, sweep_share
from shared.contract.config import Settings
from shared.store.maintained_keys import MaintainedKey, write_absent
from tests.support.helpers import expected, stored
from tests.support.platform import add_instruments, insert_prices

MODEL = "num-regime-core-v1"
D = date(2020, 6, 1)
IDS = ["P", "Q", "R"]
DATES = [D + timedelta(days=k) for k in range(20)]


def stored_market(db_url: str) -> list[MaintainedKey]:
    """Three instruments' prices and their embeddings of 20 dates, exact."""
    add_instruments(db_url, IDS)
    with psycopg.connect(db_url) as conn:
        insert_prices(
            conn,
            [
                (i, D + timedelta(days=20 - k), 10.0 + n + k * 0.3, 100.0 + k)
                for n, i in enumerate(IDS)
                for k in range(160)
            ],
        )
        keys = [MaintainedKey(i, d, MODEL, 63) for i in IDS for d in DATES]
        rewrite_keys(conn, keys)
        conn.execute("UPDATE prices_outbox SET published_at = now() - interval '1 hour'")  # relayed long ago
    return keys


def corrupt(db_url: str, instrument_id: str, as_of: date) -> None:
    """What a writer from older prices leaves: other bytes under the key (plain SQL, so a version is kept)."""
    with psycopg.connect(db_url) as conn:
        conn.execute(
            """UPDATE numeric_window_embeddings SET vector = overlay(vector placing '\\x00000000'::bytea from 1)
               WHERE entity_id = %s AND as_of_date = %s AND model_id = %s""",
            (instrument_id, as_of, MODEL),
        )


def audit(db_url: str, **settings) -> tuple[ParityAudit, list[list[str]]]:
    reloaded: list[list[str]] = []
    chosen = {"parity_sample_keys": 0, "parity_sweep_hours": 0.0, "parity_audit_seconds": 60.0} | settings
    return ParityAudit(Settings(_env_file=None, database_url=db_url, **chosen), on_mismatch=reloaded.append), reloaded


def test_a_key_rewritten_since_the_last_round_is_checked_and_repaired(db_url):
    stored_market(db_url)
    corrupt(db_url, "Q", DATES[7])
    auditor, reloaded = audit(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert auditor.round(conn) == [] and reloaded == []  # a suspect: a write may have been in flight
        found = auditor.round(conn)  # checked again: still different
        assert [(f.kind, f.entity_id, f.as_of_date) for f in found] == [("different", "Q", DATES[7])]
        assert reloaded == [["Q"]]  # the live service loads Q's windows again
        queued = conn.execute("SELECT instrument_id, trade_date FROM embedder_recompute_queue").fetchall()
        assert queued == [("Q", DATES[7])]  # the correction path rewrites it
        sources = dict(conn.execute("SELECT source, sum(keys_checked) FROM embedder_parity_audits GROUP BY 1"))
        assert sources["revised"] == 1 and sources["confirm"] == 1
        assert auditor.round(conn) == []  # the next round looks at what changed since this one


def test_a_key_recorded_absent_wrongly_is_found_missing_and_repaired(db_url):
    """A tick or a correction computed from a window missing its rows records the key absent and deletes its row:
    no stored row is left for the sample, the sweep or the ticked dates to find. The keys recorded absent since
    the last round are checked (issue 28: a chaos run left three days of an instrument missing, unnoticed)."""
    stored_market(db_url)
    with psycopg.connect(db_url) as conn:
        write_absent(conn, [("P", DATES[3], MODEL, 63)], claim=1 << 60)
    auditor, reloaded = audit(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert auditor.round(conn) == []  # a suspect
        found = auditor.round(conn)
        assert [(f.kind, f.entity_id, f.as_of_date) for f in found] == [("missing", "P", DATES[3])]
        assert reloaded == [["P"]]
        queued = conn.execute("SELECT instrument_id, trade_date FROM embedder_recompute_queue").fetchall()
        assert queued == [("P", DATES[3])]
        sources = dict(conn.execute("SELECT source, sum(keys_checked) FROM embedder_parity_audits GROUP BY 1"))
        assert sources["absent"] == 1


def test_a_suspect_repaired_before_the_next_round_is_no_mismatch(db_url):
    """A key that differed while a write was in flight, and equals the reference when checked again, is not
    counted: no alert for the normal course of corrections."""
    keys = stored_market(db_url)
    corrupt(db_url, "Q", DATES[7])
    auditor, reloaded = audit(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert auditor.round(conn) == []
        rewrite_keys(conn, [k for k in keys if k.entity_id == "Q"])  # the write that was in flight lands
        assert auditor.round(conn) == [] and reloaded == []
        assert conn.execute("SELECT sum(mismatches) FROM embedder_parity_audits").fetchone()[0] == 0


def test_keys_a_recent_price_change_reaches_are_checked(db_url):
    stored_market(db_url)
    with psycopg.connect(db_url) as conn:  # a change published by the relay whose key stayed stale
        conn.execute("UPDATE prices_daily SET close = close + 1 WHERE instrument_id = 'R' AND trade_date = %s", (D,))
        conn.execute("UPDATE prices_outbox SET published_at = now() WHERE published_at IS NULL")
    auditor, _ = audit(db_url, parity_risk_keys=1000)
    with psycopg.connect(db_url, autocommit=True) as conn:
        auditor.round(conn)
        found = auditor.round(conn)
    assert {f.entity_id for f in found} == {"R"} and len(found) == 20  # every date from D on reaches it


def test_the_sweep_covers_the_whole_table_in_passes(db_url):
    keys = stored_market(db_url)
    seen: list[tuple] = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        for _ in range(8):  # six stretches, the end of the pass, and the first stretch again
            seen.extend(k.key for k in sweep_keys(conn, 10))
        passes = conn.execute("SELECT passes FROM embedder_parity_sweep").fetchone()[0]
    assert sorted(seen[:60]) == sorted(k.key for k in keys) and len(set(seen[:60])) == 60  # every key, once
    assert passes == 1 and seen[60:] == seen[:10]  # then it starts over
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ANALYZE numeric_window_embeddings")
        assert sweep_share(conn, 60.0, 24.0) == 1  # 60 keys over 1,440 rounds a day
        assert sweep_share(conn, 60.0, 0.25) == 4  # over 15 rounds
        assert sweep_share(conn, 60.0, 0.0) == 0


def test_the_sweep_finds_a_stale_key_no_other_source_points_at(db_url):
    stored_market(db_url)
    with psycopg.connect(db_url) as conn:  # stale bytes written without leaving a trace (history off)
        conn.execute("UPDATE embedder_history SET enabled = false")
    corrupt(db_url, "P", DATES[3])
    auditor, _ = audit(db_url, parity_sweep_hours=1.0, parity_audit_seconds=600.0)  # the table in 6 rounds
    found = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ANALYZE numeric_window_embeddings")
        for _ in range(7):  # six stretches, then the suspect confirmed
            found += auditor.round(conn)
    assert [(f.entity_id, f.as_of_date) for f in found] == [("P", DATES[3])]
    with psycopg.connect(db_url, autocommit=True) as conn:
        from live.corrections import drain_once

        assert drain_once(conn).rewritten.changed == 1
    assert stored(db_url) == expected(db_url, IDS, DATES, 63, [MODEL])
