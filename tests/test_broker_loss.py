"""Beyond one machine (issue 18): a real 3-node Kafka cluster (KRaft, replication 3, min.insync.replicas 2)
from the project's broker jars, with a broker killed -9 while commands run. Every command must ride out the
loss of one broker while the other two hold the in-sync replicas."""
from __future__ import annotations

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
