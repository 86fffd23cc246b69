"""Stream == batch, byte for byte: `embedder replay` through the real broker and a real Faust
worker gives exactly the rows `replay --direct` gives."""

from __future__ import annotations

import subprocess

import psycopg
import pytest

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
