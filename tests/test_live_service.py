"""The always-on service: live capture through the outbox, ticks, corrections and a past-range replay
beside live state — all checked against SPEC section 3 over what prices_daily holds."""

from __future__ import annotations

import shutil
import signal
import subprocess
from datetime import date, timedelta

import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition

from shared.broker.topics import REPLAY_WINDOWS, WINDOWS, admin_client
from tests.support.cli import EMBEDDER, run, settings_of
from tests.support.helpers import assert_same_embeddings, expected, load_synthetic, stored, wait_for
from tests.support.markets import MODELS, live_market
from tests.support.platform import insert_prices
from tests.support.workers import live_tick_committed, start_live_worker, stop, tick_live


def latest_values(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """The last value of every key of a topic, read from the beginning to the current end."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        latest: dict[bytes, bytes | None] = {}
        while any(consumer.position(tp) < end[tp] for tp in parts):
            for records in consumer.poll(timeout_ms=1000).values():
                for r in records:
                    latest[r.key] = r.value
        return latest
    finally:
        consumer.close()


@pytest.mark.slow
def test_live_capture_ticks_corrections_and_a_past_replay_beside_live_state(db_url, cli_env, tmp_path):
    ids, days = live_market(db_url, tmp_path)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM embedder_outbox_changes").fetchone()[0] > 2000
    partitions = int(cli_env["EMBEDDER_PARTITIONS"])
    worker = start_live_worker(cli_env, tmp_path)
    try:
        tick_live(cli_env, db_url, days)
        before_correction = stored(db_url)
        assert_same_embeddings(before_correction, expected(db_url, ids, days, 63, MODELS))

        # Corrections while the worker runs: a close inside the ticks' windows, and one before the first tick.
        with psycopg.connect(db_url) as conn:
            changed_rows = conn.execute(
                """UPDATE prices_daily SET close = close * 1.05 WHERE instrument_id = 'SYN000'
                   AND trade_date = (SELECT max(trade_date) FROM prices_daily
                                     WHERE instrument_id = 'SYN000' AND trade_date <= %s)""",
                (days[2],),
            ).rowcount
            assert changed_rows == 1
            conn.execute(
                """UPDATE prices_daily SET close = close * 0.9, volume = volume + 1
                            WHERE instrument_id = 'SYN004'
                              AND trade_date = (SELECT max(trade_date) FROM prices_daily
                                                WHERE instrument_id = 'SYN004' AND trade_date < %s)""",
                (days[0] - timedelta(days=20),),
            )
        want = expected(db_url, ids, days, 63, MODELS)
        changed = {k for k in want if want[k] != before_correction.get(k)}
        assert {k[0] for k in changed} == {"SYN000", "SYN004"}  # the corrections matter to the result
        wait_for(lambda: stored(db_url) == want, 120, "the corrected embeddings")

        # A replay of a past range through the same worker leaves the live rows and windows alone.
        live_before = stored(db_url)
        run(
            cli_env,
            "replay",
            "--from",
            "2019-03-01",
            "--to",
            "2019-03-29",
            "--market-id",
            "US_EQ",
            "--model-id",
            MODELS[0],
            "--publish-rows",
        )  # a run of its own (else the worker reads prices_daily)
        after = stored(db_url)
        assert {k: v for k, v in after.items() if k[1] in days} == live_before
        with psycopg.connect(db_url) as conn:
            march = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT trade_date FROM prices_daily "
                    "WHERE trade_date BETWEEN '2019-03-01' AND '2019-03-29'"
                )
            ]
        assert {k: v for k, v in after.items() if k[1] not in days} == expected(db_url, ids, march, 63, MODELS[:1])
        # The finished replay's windows are dropped: tombstones are the last word on its keys.
        with psycopg.connect(db_url) as conn:
            (run_id,) = conn.execute("SELECT run_id FROM embedder_runs WHERE completed_at IS NOT NULL").fetchone()
        changelog = f"{cli_env['EMBEDDER_APP_ID']}-{REPLAY_WINDOWS}-changelog"  # replay state has tables of its own

        def replay_windows_deleted() -> bool:
            latest = latest_values(cli_env["KAFKA_BOOTSTRAP_SERVERS"], changelog)
            of_run = {k: v for k, v in latest.items() if run_id.encode() in k}
            return bool(of_run) and all(v is None for v in of_run.values())

        wait_for(replay_windows_deleted, 60, f"tombstones for the windows of {run_id}")

        with psycopg.connect(db_url) as conn:
            conn.execute("DELETE FROM numeric_window_embeddings WHERE as_of_date = %s", (days[-1],))
            conn.execute("DELETE FROM embedder_tick_commits WHERE run_id = 'live' AND as_of_date = %s", (days[-1],))
        run(cli_env, "tick", "--as-of", days[-1].isoformat(), "--model-id", MODELS[0], "--model-id", MODELS[1])
        wait_for(lambda: live_tick_committed(db_url, days[-1], partitions), 120, "the repeated live tick")
        assert {k: v for k, v in stored(db_url).items() if k[1] in days} == want  # live windows intact
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


def test_windows_that_lost_their_history_are_loaded_again_when_a_tick_finds_them_short(db_url, cli_env, tmp_path):
    """The live windows are lost (the state folder and the windows' changelog gone) and the next day's rows land
    before its tick: every window holds that one row, too little to embed. The tick finds them shorter than
    prices_daily and loads them again, so its embeddings are exact without the parity audit (off here)."""
    ids, days = live_market(db_url, tmp_path)
    with psycopg.connect(db_url) as conn:
        held = conn.execute(
            "DELETE FROM prices_daily WHERE trade_date = %s RETURNING instrument_id, trade_date, close, volume",
            (days[-1],),
        ).fetchall()
    env = cli_env | {"EMBEDDER_PARITY_AUDIT_SECONDS": "0"}
    worker = start_live_worker(env, tmp_path)
    try:
        tick_live(env, db_url, days[-2:-1])
    finally:
        stop(worker)
    assert stored(db_url) == expected(db_url, ids, days[-2:-1], 63, MODELS)
    shutil.rmtree(tmp_path / "state")
    changelog = f"{env['EMBEDDER_APP_ID']}-{WINDOWS}-changelog"
    admin = admin_client(settings_of(env))
    try:
        admin.delete_topics([changelog])
        wait_for(lambda: changelog not in admin.list_topics(), 60, "the windows' changelog to be deleted")
    finally:
        admin.close()

    worker = start_live_worker(env, tmp_path)
    try:
        with psycopg.connect(db_url) as conn:
            insert_prices(conn, held)
        tick_live(env, db_url, days[-1:])
        want = expected(db_url, ids, days[-2:], 63, MODELS)
        wait_for(lambda: stored(db_url) == want, 120, "the day's embeddings from windows loaded again")
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert "hold fewer rows of" in log and "loading them again" in log
        with psycopg.connect(db_url) as conn:
            absent = set(conn.execute("SELECT entity_id, as_of_date, model_id FROM embedder_absent_embeddings"))
        assert not absent & set(want)  # no key the day has was recorded absent
        assert worker.poll() is None
    finally:
        stop(worker)


@pytest.mark.slow
def test_automatic_tick_after_a_quiet_period(db_url, cli_env, tmp_path):
    load_synthetic(db_url, tmp_path, instruments=6, start=date(2019, 6, 3), end=date(2019, 12, 31))
    env = cli_env | {"EMBEDDER_AUTO_TICK_QUIET_SECONDS": "2", "EMBEDDER_LIVE_MODEL_IDS": '["numeric-simple-v1"]'}
    with psycopg.connect(db_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT instrument_id FROM instruments ORDER BY 1")]
        last = conn.execute("SELECT max(trade_date) FROM prices_daily").fetchone()[0]
    worker = subprocess.Popen(
        EMBEDDER + ["worker", "--data-dir", str(tmp_path / "state")],
        env=env,
        stdout=open(tmp_path / "worker.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: live_tick_committed(db_url, last, int(env["EMBEDDER_PARTITIONS"])), 120, "the automatic tick")
        assert_same_embeddings(stored(db_url), expected(db_url, ids, [last], 63, ["numeric-simple-v1"]))
        with psycopg.connect(db_url) as conn:
            ticks = conn.execute("SELECT trade_date FROM prices_outbox WHERE kind = 'tick'").fetchall()
        assert ticks == [(last,)]  # one tick, for the newest captured trade date
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


def test_published_outbox_entries_are_pruned_after_their_keep_time(db_url):
    """The outbox does not grow forever: entries published longer ago than the keep time go,
    recent and unpublished ones stay."""
    from shared.store.outbox import prune_outbox

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("TRUNCATE prices_outbox")
        conn.execute("""INSERT INTO prices_outbox (instrument_id, trade_date, close, volume, published_at) VALUES
                        ('OLD', '2020-01-02', 1, 1, now() - interval '2 days'),
                        ('RECENT', '2020-01-02', 1, 1, now() - interval '1 hour'),
                        ('PENDING', '2020-01-02', 1, 1, NULL)""")
        assert prune_outbox(conn, 24.0) == 1
        left = {r[0] for r in conn.execute("SELECT instrument_id FROM prices_outbox")}
    assert left == {"RECENT", "PENDING"}


def test_redrive_captures_rows_again_as_prices_daily_holds_them_now(db_url):
    """`embedder dead-letters --redrive` re-sends fixed rows through the relay's checks; rows no longer
    in prices_daily are skipped (a refused row never reached a window)."""
    from shared.store.outbox import recapture

    with psycopg.connect(db_url) as conn:
        conn.execute("""INSERT INTO prices_daily (instrument_id, trade_date, open, high, low, close, adjusted_close,
                        volume, currency) VALUES ('FIXED', '2020-01-02', 1, 1, 1, 42.5, 1, 7, 'USD')""")
        conn.execute("TRUNCATE prices_outbox")
        sent = recapture(conn, [("FIXED", date(2020, 1, 2)), ("FIXED", date(2020, 1, 3)), ("FIXED", date(2020, 1, 2))])
        entries = conn.execute("SELECT kind, instrument_id, trade_date, close, volume FROM prices_outbox").fetchall()
    assert sent == 1 and entries == [("row", "FIXED", date(2020, 1, 2), 42.5, 7.0)]
