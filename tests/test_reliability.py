"""Whatever dies, the table ends equal to the batch result, with no row missing and none doubled.

Real broker, real PostgreSQL, real worker processes: kill -9 of the worker (three times) and of
the replay producer, a 30 s loss of the database, a broker restart, and a SIGTERM (in
test_stream_resilience.py). Each prints a line for the closing note's fault table.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.support.cli import EMBEDDER, run_command
from tests.support.helpers import assert_same_embeddings, load_synthetic, stored, wait_for
from tests.support.tcp_proxy import TcpProxy
from tests.support.workers import get, group_members, replay_ticks_committed
from tests.support.workers import start_named_worker as start_worker
from tests.support.workers import stop_if_running as stop

YEAR = [
    "--from",
    "2019-01-01",
    "--to",
    "2019-12-31",
    "--market-id",
    "US_EQ",
    "--model-id",
    "num-regime-core-v1",
    "--model-id",
    "numeric-simple-v1",
]


def start_replay(env) -> subprocess.Popen:
    return subprocess.Popen(
        EMBEDDER + ["replay", *YEAR],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def direct_result(env, url: str) -> dict:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE numeric_window_embeddings")
    proc = run_command(EMBEDDER + ["replay", "--direct", *YEAR], env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return stored(url)


def row_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM numeric_window_embeddings").fetchone()[0]


def check_against_batch(env, url: str, fault: str, injected: int, recovery: float) -> None:
    """Equality byte for byte and exact counts; one line for the fault table."""
    streamed, present = stored(url), row_count(url)
    batch = direct_result(env, url)
    print(
        f"\nFAULT-TABLE | {fault} | injected {injected} | expected {len(batch)} | present {present} | "
        f"duplicated {present - len(streamed)} | recovery {recovery:.1f}s"
    )
    assert present == len(streamed)  # no duplicate rows (the unique key would forbid them anyway)
    assert_same_embeddings(streamed, batch, url)
    assert present == len(batch)


def ticks_total(url: str) -> int:
    """Ticks the run will commit: as_of dates x partitions (read once the replay has started)."""
    with psycopg.connect(url) as conn:
        dates = conn.execute("SELECT count(DISTINCT trade_date) FROM prices_daily").fetchone()[0]
    return dates


@pytest.fixture
def cli_env(cli_env):
    """Replays in 7-day blocks: many ticks, so the faults land mid-run (with the default 240-day blocks
    the stream finishes these ranges in a handful of blocks, before a fault can be injected)."""
    return cli_env | {"EMBEDDER_REPLAY_BLOCK_DAYS": "7"}


@pytest.mark.slow
def test_worker_killed_three_times_and_producer_killed_once(db_url, cli_env, tmp_path):
    load_synthetic(db_url, tmp_path, instruments=100)  # 100 instruments x 2019
    partitions = int(cli_env["EMBEDDER_PARTITIONS"])
    total = ticks_total(db_url) * partitions
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    points = [rng.uniform(0.1, 0.3), rng.uniform(0.4, 0.6), rng.uniform(0.7, 0.85)]  # one per third
    print(f"\nkill points (seed {seed}): {[round(p, 2) for p in points]} of {total} tick commits")
    worker = start_worker(cli_env, tmp_path, "w")
    replay = None
    try:
        wait_for(lambda: group_members(cli_env) == 1, 60, "the worker to join its group")
        replay = start_replay(cli_env)
        recoveries = []
        for point in points:
            wait_for(lambda p=point: replay_ticks_committed(db_url) >= p * total, 300, f"{point:.0%} of the ticks")
            worker.kill()  # kill -9
            worker.wait()
            killed_at = time.monotonic()
            before = replay_ticks_committed(db_url)
            worker = start_worker(cli_env, tmp_path, "w")  # same state folder
            # (A kill can land after the run's last tick commit: the stream finishes the last 15 % of
            # this run in about a second. Then there is nothing left to make progress on.)
            wait_for(
                lambda b=before: b >= total or replay_ticks_committed(db_url) > b, 180, "progress after the restart"
            )
            recoveries.append(time.monotonic() - killed_at)
            # The next kill waits until the dead member has left the group: a worker that joins while its
            # group is still rebalancing can sit without fetching in faust-streaming 0.15.3 (docs/reliability.md).
            wait_for(lambda: group_members(cli_env) == 1, 60, "the group to settle")
        out, err = replay.communicate(timeout=600)
        assert replay.returncode == 0, err[-3000:]
        check_against_batch(cli_env, db_url, "worker kill -9", len(points), max(recoveries))

        # The producer: kill -9 the replay command while it publishes or waits, then run it again.
        with psycopg.connect(db_url) as conn:
            conn.execute("TRUNCATE numeric_window_embeddings")
        replay = start_replay(cli_env)
        delay = rng.uniform(1.5, 5.0)  # publishing or waiting, wherever it is then
        time.sleep(delay)
        print(f"producer killed after {delay:.1f}s, {replay_ticks_committed(db_url) - total} ticks committed")
        replay.kill()
        replay.wait()
        killed_at = time.monotonic()
        rerun = run_command(EMBEDDER + ["replay", *YEAR], cli_env, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        check_against_batch(cli_env, db_url, "replay producer kill -9", 1, time.monotonic() - killed_at)
    finally:
        stop(worker)
        if replay and replay.poll() is None:
            replay.kill()


@pytest.mark.slow
def test_postgres_unreachable_for_30s_mid_stream(db_url, cli_env, tmp_path):
    load_synthetic(db_url, tmp_path, instruments=100)
    parts = urlsplit(db_url)
    proxy = TcpProxy(parts.hostname, parts.port)  # the worker's only way to its database
    proxied = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"))
    worker_env = cli_env | {"DATABASE_URL": proxied, "EMBEDDER_LAG_SAMPLE_SECONDS": "1"}
    worker = start_worker(worker_env, tmp_path, "w")
    replay = None
    try:
        wait_for(lambda: group_members(cli_env) == 1, 60, "the worker to join its group")
        port = (tmp_path / "w" / "web.port").read_text().strip()
        replay = start_replay(cli_env)  # the command itself reads the database directly
        wait_for(lambda: replay_ticks_committed(db_url) >= 100, 300, "the replay to be under way")
        proxy.cut()
        cut_at = time.monotonic()
        time.sleep(30)
        committed_during = replay_ticks_committed(db_url)
        proxy.restore()
        out, err = replay.communicate(timeout=600)
        assert replay.returncode == 0, err[-3000:]
        recovery = time.monotonic() - cut_at - 30
        metrics = get(f"http://127.0.0.1:{port}/metrics")[1].decode()
        retries = float(re.search(r"^embedder_sink_retries_total ([\d.e+]+)$", metrics, re.M).group(1))
        assert retries >= 2  # backoff: several attempts during the outage, visible in the metrics
        log = (tmp_path / "w.log").read_text(errors="replace")
        assert "sink write failed" in log and "retrying in" in log  # and in the log
        assert replay_ticks_committed(db_url) > committed_during
        check_against_batch(cli_env, db_url, "PostgreSQL unreachable 30 s", 1, recovery)
    finally:
        stop(worker)
        proxy.close()
        if replay and replay.poll() is None:
            replay.kill()


@pytest.mark.slow
def test_broker_restarted_mid_stream(db_url, cli_env, tmp_path, local_services):
    if local_services is None:
        pytest.skip("the broker is not this project's local one, so the test cannot restart it")
    load_synthetic(db_url, tmp_path, instruments=100)
    worker = start_worker(cli_env, tmp_path, "w")
    replay = None
    try:
        wait_for(lambda: group_members(cli_env) == 1, 60, "the worker to join its group")
        replay = start_replay(cli_env)
        wait_for(lambda: replay_ticks_committed(db_url) >= 100, 300, "the replay to be under way")
        down_at = time.monotonic()
        local_services.kafka.down()
        time.sleep(5)
        local_services.kafka.up()
        out, err = replay.communicate(timeout=900)
        assert replay.returncode == 0, err[-3000:]
        check_against_batch(cli_env, db_url, "Kafka broker restart", 1, time.monotonic() - down_at)
    finally:
        local_services.kafka.up()  # idempotent: back up whatever happened
        stop(worker)
        if replay and replay.poll() is None:
            replay.kill()


@pytest.mark.slow
def test_workers_joining_and_leaving_mid_replay(db_url, cli_env, tmp_path):
    """A rebalance storm: while a replay runs, workers join, leave (SIGTERM) and die (kill -9, so the
    group waits out their session), one change every few seconds; no message may be lost."""
    load_synthetic(db_url, tmp_path, instruments=300)
    workers = [start_worker(cli_env, tmp_path, "w0")]
    replay = None
    changes = 0
    try:
        wait_for(lambda: group_members(cli_env) == 1, 60, "the first worker to join its group")
        replay = start_replay(cli_env)
        wait_for(lambda: replay_ticks_committed(db_url) > 0, 120, "the first tick")
        for how in ["join", "kill", "join", "term", "join", "join", "kill", "term"]:
            time.sleep(1.5)
            if replay.poll() is not None:
                break
            if how == "join":
                workers.append(start_worker(cli_env, tmp_path, f"w{len(workers) + changes}"))
            else:
                victim = workers.pop()
                stop(victim, signal.SIGTERM if how == "term" else signal.SIGKILL)
            changes += 1
        out, err = replay.communicate(timeout=600)
        assert replay.returncode == 0, err[-3000:]
        logs = " ".join(p.read_text(errors="replace") for p in tmp_path.glob("w*.log"))
        assert "were skipped by the consumer" not in logs
        print(f"\nmembership changes during the replay: {changes}")
        check_against_batch(cli_env, db_url, "workers joining and leaving", changes, 0.0)
    finally:
        for w in workers:
            stop(w)
        if replay and replay.poll() is None:
            replay.kill()
