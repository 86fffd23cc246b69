"""Workers stopped mid-replay (gracefully or killed) and restarted, and two workers in one group,
give exactly the batch path's table."""

from __future__ import annotations

import signal
import subprocess

import psycopg
import pytest

from tests.support.cli import EMBEDDER, run_command
from tests.support.helpers import assert_same_embeddings, load_synthetic, stored, wait_for
from tests.support.workers import group_members, replay_ticks_committed
from tests.support.workers import start_named_worker as start_worker
from tests.support.workers import stop_if_running as stop

RANGE = [
    "--from",
    "2019-02-01",
    "--to",
    "2019-11-29",
    "--market-id",
    "US_EQ",
    "--model-id",
    "num-regime-core-v1",
    "--model-id",
    "numeric-simple-v1",
]


def batch_result(env, url: str) -> dict:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE numeric_window_embeddings")
    proc = run_command(EMBEDDER + ["replay", "--direct", *RANGE], env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return stored(url)


@pytest.fixture
def cli_env(cli_env):
    """Replays in 7-day blocks: many ticks, so the faults land mid-run (with the default 240-day blocks
    the stream finishes these ranges in a handful of blocks, before a fault can be injected)."""
    return cli_env | {"EMBEDDER_REPLAY_BLOCK_DAYS": "7"}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_worker_stopped_mid_replay_and_restarted_gives_the_batch_table(db_url, cli_env, tmp_path, sig):
    load_synthetic(db_url, tmp_path, instruments=20)
    worker = start_worker(cli_env, tmp_path, "w")
    replay = None
    try:
        wait_for(lambda: group_members(cli_env) == 1, 60, "the worker to join its group")
        replay = subprocess.Popen(
            EMBEDDER + ["replay", *RANGE], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        wait_for(lambda: replay_ticks_committed(db_url) >= 40, 120, "the replay to be under way", interval=0.02)
        stop(worker, sig)
        assert replay.poll() is None  # still waiting: the run is not complete
        worker = start_worker(cli_env, tmp_path, "w")  # same state folder
        out, err = replay.communicate(timeout=300)
        assert replay.returncode == 0, err[-3000:]
        streamed = stored(db_url)
    finally:
        stop(worker)
        if replay and replay.poll() is None:
            replay.kill()
    batch = batch_result(cli_env, db_url)
    assert len(batch) > 3000
    assert_same_embeddings(streamed, batch)


@pytest.mark.slow
def test_two_workers_in_one_group_give_the_batch_table(db_url, cli_env, tmp_path):
    load_synthetic(db_url, tmp_path, instruments=20)
    workers = [start_worker(cli_env, tmp_path, "w1"), start_worker(cli_env, tmp_path, "w2")]
    try:
        wait_for(lambda: group_members(cli_env) == 2, 90, "both workers to join the group")
        proc = run_command(EMBEDDER + ["replay", *RANGE], cli_env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "started one" not in proc.stderr  # the replay used the running workers
        streamed = stored(db_url)
    finally:
        for w in workers:
            stop(w)
    assert_same_embeddings(streamed, batch_result(cli_env, db_url))
