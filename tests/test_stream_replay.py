"""Stream == batch, byte for byte: `embedder replay` through the real broker and a real Faust
worker gives exactly the rows `replay --direct` gives."""

from __future__ import annotations

import subprocess
import uuid
from datetime import date

import psycopg
import pytest
from kafka import KafkaConsumer

from shared.broker.topics import stream_tables
from streams import window_store
from tests.support.cli import EMBEDDER, run_command
from tests.support.helpers import assert_same_embeddings, load_synthetic, stored


@pytest.fixture
def stream_env(cli_env) -> dict[str, str]:
    """cli_env already carries unique topics and a unique consumer group for this test."""
    return cli_env


def replay(env: dict[str, str], *args: str, direct: bool = False) -> subprocess.CompletedProcess:
    cmd = EMBEDDER + ["replay", *args] + (["--direct"] if direct else [])
    proc = run_command(cmd, env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def clear_embeddings(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE numeric_window_embeddings")


@pytest.mark.slow
@pytest.mark.parametrize("window_days", ["63", "20"])
def test_stream_equals_batch_on_synthetic_market(db_url, stream_env, tmp_path, window_days):
    load_synthetic(db_url, tmp_path, instruments=20)  # gaps, late listings, short histories, zero volumes
    args = [
        "--from",
        "2019-04-01",
        "--to",
        "2019-07-31",
        "--market-id",
        "US_EQ",
        "--window-days",
        window_days,
        "--model-id",
        "numeric-simple-v1",
        "--model-id",
        "num-regime-core-v1",
    ]
    proc = replay(stream_env, *args)
    assert "embeddings committed" in proc.stdout
    streamed = stored(db_url)
    clear_embeddings(db_url)
    replay(stream_env, *args, direct=True)
    batch = stored(db_url)
    assert len(batch) > 1000
    assert_same_embeddings(streamed, batch)
    # Re-publishing the same run creates no duplicates and changes no bytes.
    replay(stream_env, *args)
    assert_same_embeddings(stored(db_url), batch, db_url)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM numeric_window_embeddings").fetchone()[0] == len(batch)


@pytest.mark.slow
def test_stream_equals_batch_on_real_data_slice(real_db_url, stream_env):
    env = stream_env | {"DATABASE_URL": real_db_url}
    args = [
        "--from",
        "2018-01-01",
        "--to",
        "2019-12-31",
        "--market-id",
        "US_EQ",
        "--limit",
        "50",
        "--model-id",
        "num-regime-core-v1",
        "--model-id",
        "numeric-simple-v1",
    ]
    clear_embeddings(real_db_url)
    replay(env, *args)
    streamed = stored(real_db_url)
    clear_embeddings(real_db_url)
    replay(env, *args, direct=True)
    batch = stored(real_db_url)
    assert len(batch) > 40_000  # 50 instruments x ~500 dates x 2 models, less insufficient history
    assert_same_embeddings(streamed, batch)


@pytest.mark.slow
def test_a_replays_windows_drop_the_rows_of_committed_ticks(db_url, stream_env, tmp_path):
    """Each window of a replay keeps the look-back of the ticks not committed yet and the block's slack, not every
    row since the run began: faust reports offset commits to its monitor alone, and a window learns of them
    from there. Read from the replay windows' changelog: every value a real worker wrote."""
    load_synthetic(db_url, tmp_path, instruments=6, start=date(2015, 1, 1), end=date(2019, 12, 31))
    env = stream_env | {"EMBEDDER_REPLAY_BLOCK_DAYS": "30", "EMBEDDER_SINK_MAX_PENDING_EMBEDDINGS": "100"}
    replay(env, "--from", "2015-06-01", "--to", "2019-12-31", "--market-id", "US_EQ", "--window-days", "20")
    consumer = KafkaConsumer(
        bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
        group_id=f"check-{uuid.uuid4().hex[:8]}",
    )
    replay_windows = stream_tables()[2]
    (topic,) = [t for t in consumer.topics() if t.startswith(env["EMBEDDER_APP_ID"]) and replay_windows in t]
    consumer.subscribe([topic])
    windows = [window_store.parse_head("", m.value, {}) for m in consumer if m.value]
    spans = [int(w.days[-1] - w.days[0]) for w in windows if w.rows.size]
    consumer.close()
    assert len(spans) > 100
    # One look-back (3 x 20 days) and a block (30), plus the blocks the worker ran ahead of its last offset commit
    # (0.2 s apart; 240-360 days here). Without the commits heard, the last windows held every row since the
    # run's first tick: 1,700 days.
    assert max(spans) < 730, sorted(spans)[-10:]
