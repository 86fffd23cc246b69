"""Beyond one machine (issue 18): a real 3-node Kafka cluster (KRaft, replication 3, min.insync.replicas 2)
from the project's broker jars, with a broker killed -9 while commands run. Every command must ride out the
loss of one broker while the other two hold the in-sync replicas."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from tests.helpers import assert_same_embeddings, load_synthetic, stored

EMBEDDER = [sys.executable, "-m", "embedder.cli"]
MODELS = ["num-regime-core-v1"]


def run(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(EMBEDDER + list(args), env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.parametrize("victim, after", [(1, 0.5), (2, 3.0)])
def test_a_replay_rides_out_a_broker_killed_while_it_runs(cluster_env, kafka_cluster, tmp_path, victim, after):
    """`embedder replay` through the cluster (it starts a worker of its own) with one broker killed -9 in its
    first second or a few seconds in, and started again later: the replay exits 0, its table equals
    `replay --direct`, and its group is left without lag."""
    url = cluster_env["DATABASE_URL"]
    load_synthetic(url, tmp_path, instruments=30, start=__import__("datetime").date(2019, 1, 1))
    days = ["--from", "2019-10-01", "--to", "2019-12-31", "--market-id", "US_EQ", "--model-id", MODELS[0]]

    def kill_then_restart() -> None:
        time.sleep(after)
        kafka_cluster.kill(victim)
        time.sleep(20)
        kafka_cluster.start(victim)

    chaos = threading.Thread(target=kill_then_restart)
    chaos.start()
    replay = run(cluster_env, "replay", *days)
    chaos.join()
    (tmp_path / "replay.err").write_text(replay.stderr)
    assert replay.returncode == 0, replay.stderr[-3000:]
    streamed = stored(url)
    assert len(streamed) > 30 * 50
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE numeric_window_embeddings")
    direct = run(cluster_env, "replay", "--direct", *days)
    assert direct.returncode == 0, direct.stderr[-2000:]
    assert_same_embeddings(streamed, stored(url), url)
    lag = run(cluster_env, "lag", "--json", "--samples", "2", "--interval", "0.5")
    assert lag.returncode == 0, lag.stdout[-2000:] + lag.stderr[-2000:]


@pytest.mark.slow
def test_the_live_worker_and_its_relay_ride_out_a_broker_loss(cluster_env, kafka_cluster, tmp_path):
    """The always-on worker on the cluster: days land with plain INSERTs and ticks while one broker is killed
    -9 and started again. Every tick commits, the table equals the reference over the days, and the worker's
    log holds a few lines about the outage, not one per reconnect attempt."""
    from datetime import date

    from tests.helpers import expected, wait_for
    from tests.platform import insert_prices
    from tests.test_live_service import live_tick_committed, start_live_worker

    url = cluster_env["DATABASE_URL"]
    load_synthetic(url, tmp_path, instruments=12, start=date(2019, 1, 1))
    with psycopg.connect(url) as conn:
        days = [r[0] for r in conn.execute("SELECT DISTINCT trade_date FROM prices_daily ORDER BY 1 DESC LIMIT 4")][::-1]
        held = conn.execute("DELETE FROM prices_daily WHERE trade_date >= %s RETURNING instrument_id, trade_date, close, "
                            "volume", (days[0],)).fetchall()
        ids = [r[0] for r in conn.execute("SELECT instrument_id FROM instruments ORDER BY 1")]
    worker = start_live_worker(cluster_env, tmp_path)
    partitions = int(cluster_env["EMBEDDER_PARTITIONS"])
    try:
        def loaded() -> bool:
            with psycopg.connect(url) as conn:
                done, queued = conn.execute("SELECT count(published_at), count(*) FROM embedder_bootstrap").fetchone()
            return queued > 0 and done == queued
        wait_for(loaded, 180, "the live bootstrap")
        for k, day in enumerate(days):
            if k == 1:
                kafka_cluster.kill(1)
                status = run(cluster_env, "status", "--json")  # the operator's commands while a broker is down
                assert status.returncode == 0 and json.loads(status.stdout)["dead_letters"]["error"] is None, \
                    status.stdout[-2000:] + status.stderr[-2000:]
                letters = run(cluster_env, "dead-letters", "--json", "--since", "1d")
                assert letters.returncode == 0, letters.stderr[-2000:]
            if k == 3:
                kafka_cluster.start(1)
            with psycopg.connect(url) as conn, conn.transaction():
                insert_prices(conn, [r for r in held if r[1] == day])
            tick = run(cluster_env, "tick", "--as-of", day.isoformat(), "--model-id", MODELS[0])
            assert tick.returncode == 0, tick.stderr[-2000:]
        wait_for(lambda: all(live_tick_committed(url, d, partitions) for d in days), 300, "every live tick")
        assert_same_embeddings(stored(url), expected(url, ids, days, 63, MODELS), url)
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        if not kafka_cluster.node(1).running_pid():
            kafka_cluster.start(1)
    lines = (tmp_path / "worker.log").read_text(errors="replace").splitlines()
    noisy = [line for line in lines if "ERROR" in line or "WARNING" in line or "WARN" in line]
    assert len(noisy) < 40, "\n".join(noisy[-40:])  # 20 here (763 in the run, a line per attempt)
