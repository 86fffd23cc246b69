"""Workers stopped mid-replay (gracefully or killed) and restarted, and two workers in one group,
give exactly the batch path's table."""
from __future__ import annotations

import signal
import subprocess
import sys

import psycopg
import pytest

from shared.config import Settings
from shared.topics import admin_client
from tests.helpers import assert_same_embeddings, load_synthetic, stored, wait_for

EMBEDDER = [sys.executable, "-m", "embedder.cli"]

RANGE = ["--from", "2019-02-01", "--to", "2019-11-29", "--market-id", "US_EQ",
         "--model-id", "num-regime-core-v1", "--model-id", "numeric-simple-v1"]


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(_env_file=None, database_url=env["DATABASE_URL"],
                    kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], app_id=env["EMBEDDER_APP_ID"])


def group_members(env: dict[str, str]) -> int:
    """Members of a Stable group that each hold some prices partitions (0 while it rebalances).

    Starting work in the middle of a rebalance can leave faust-streaming 0.15.3 with a worker that
    never fetches its newly assigned partitions (seen in this test); the tests start on a stable group.
    """
    admin = admin_client(settings_of(env))
    try:
        groups = admin.describe_groups([env["EMBEDDER_APP_ID"]])
    finally:
        admin.close()
    count = 0
    for g in groups.values():
        if g.get("group_state") != "Stable":
            return 0
        for m in g.get("members") or []:
            topics = {a["topic"] for a in (m.get("member_assignment") or {}).get("assigned_partitions", [])
                      if a.get("partitions")}
            if env["EMBEDDER_PRICES_TOPIC"] not in topics:
                return 0
            count += 1
    return count


def start_worker(env, tmp_path, name: str) -> subprocess.Popen:
    return subprocess.Popen(EMBEDDER + ["worker", "--no-capture", "--data-dir", str(tmp_path / name)], env=env,
                            stdout=open(tmp_path / f"{name}.log", "ab"), stderr=subprocess.STDOUT)




def replay_ticks_committed(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM embedder_tick_commits WHERE run_id <> 'live'").fetchone()[0]


def batch_result(env, url: str) -> dict:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE numeric_window_embeddings")
    proc = subprocess.run(EMBEDDER + ["replay", "--direct", *RANGE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return stored(url)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(timeout=60)



@pytest.fixture
def cli_env(cli_env):
    """Replays in 7-day blocks: many ticks, so the faults land mid-run (with the default 60-day blocks
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
        replay = subprocess.Popen(EMBEDDER + ["replay", *RANGE], env=cli_env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
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
        proc = subprocess.run(EMBEDDER + ["replay", *RANGE], env=cli_env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "started one" not in proc.stderr  # the replay used the running workers
        streamed = stored(db_url)
    finally:
        for w in workers:
            stop(w)
    assert_same_embeddings(streamed, batch_result(cli_env, db_url))
