"""Beyond one machine (issue 18): a real 3-node Kafka cluster (KRaft, replication 3, min.insync.replicas 2)
from the project's broker jars, with a broker killed -9 while commands run. Every command must ride out the
loss of one broker while the other two hold the in-sync replicas."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import psycopg
import pytest

from tests.support.cli import EMBEDDER, run_command
from tests.support.helpers import assert_same_embeddings, load_synthetic, stored

MODELS = ["num-regime-core-v1"]


def run(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_command(EMBEDDER + list(args), env, timeout=timeout)


def replay_phase(url: str) -> str:
    """Where a running replay is, read from its record: `start` (no run recorded yet: the worker it starts,
    topics, offsets), `publishing` (recorded, target offsets not yet), `waiting` (published, not complete)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT target_offsets IS NOT NULL, completed_at IS NOT NULL FROM embedder_runs "
            "ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
    if row is None:
        return "start"
    return "done" if row[1] else ("waiting" if row[0] else "publishing")


@pytest.mark.slow
@pytest.mark.parametrize("phase, victim", [("start", 1), ("publishing", 2), ("waiting", 3)])
def test_a_replay_rides_out_a_broker_killed_in_each_of_its_phases(cluster_env, kafka_cluster, tmp_path, phase, victim):
    """`embedder replay` through the cluster (it starts a worker of its own) with one broker killed -9 at the
    start (its first half second: the worker it starts, topics, offsets), while it publishes, or while it waits
    for the worker, and started again 20 s later: the replay exits 0, its table equals `replay --direct`, and
    its group is left without lag."""
    from datetime import date

    url = cluster_env["DATABASE_URL"]
    load_synthetic(url, tmp_path, instruments=60, start=date(2018, 1, 1))
    days = ["--from", "2019-07-01", "--to", "2019-12-31", "--market-id", "US_EQ", "--model-id", MODELS[0]]
    killed_in: list[str] = []

    def kill_in_phase_then_restart() -> None:
        deadline = time.monotonic() + 300
        if phase == "start":
            time.sleep(0.5)
        else:
            while replay_phase(url) not in (phase, "done") and time.monotonic() < deadline:
                time.sleep(0.01)
        killed_in.append(replay_phase(url))
        kafka_cluster.kill(victim)
        time.sleep(20)
        kafka_cluster.start(victim)

    chaos = threading.Thread(target=kill_in_phase_then_restart)
    chaos.start()
    replay = run(cluster_env, "replay", *days)
    chaos.join()
    (tmp_path / "replay.err").write_text(replay.stderr)
    assert killed_in == [phase], killed_in  # the broker died in the phase this run is about
    assert replay.returncode == 0, replay.stderr[-3000:]
    streamed = stored(url)
    assert len(streamed) > 60 * 100
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE numeric_window_embeddings")
    direct = run(cluster_env, "replay", "--direct", *days)
    assert direct.returncode == 0, direct.stderr[-2000:]
    assert_same_embeddings(streamed, stored(url), url)
    lag = run(cluster_env, "lag", "--json", "--samples", "2", "--interval", "0.5")
    assert lag.returncode == 0, lag.stdout[-2000:] + lag.stderr[-2000:]


@pytest.mark.slow
def test_the_live_worker_and_its_relay_ride_out_a_broker_loss_and_a_rolling_restart(
    cluster_env, kafka_cluster, tmp_path
):
    """The always-on worker on the cluster: days land with plain INSERTs and ticks while one broker is killed
    -9 and started again, and during the last day every broker is restarted in turn (a rolling upgrade).
    Every tick commits, the table equals the reference over the days, and the worker's log holds a few lines
    about the outages, not one per reconnect attempt."""
    from datetime import date

    from tests.support.helpers import expected, wait_for
    from tests.support.platform import insert_prices
    from tests.support.workers import live_tick_committed, start_live_worker

    url = cluster_env["DATABASE_URL"]
    load_synthetic(url, tmp_path, instruments=12, start=date(2019, 1, 1))
    with psycopg.connect(url) as conn:
        days = [r[0] for r in conn.execute("SELECT DISTINCT trade_date FROM prices_daily ORDER BY 1 DESC LIMIT 5")][
            ::-1
        ]
        held = conn.execute(
            "DELETE FROM prices_daily WHERE trade_date >= %s RETURNING instrument_id, trade_date, close, volume",
            (days[0],),
        ).fetchall()
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
                assert status.returncode == 0 and json.loads(status.stdout)["dead_letters"]["error"] is None, (
                    status.stdout[-2000:] + status.stderr[-2000:]
                )
                letters = run(cluster_env, "dead-letters", "--json", "--since", "1d")
                assert letters.returncode == 0, letters.stderr[-2000:]
            if k == 3:
                kafka_cluster.start(1)
            rolling = None
            if k == 4:  # the last day: every broker restarted in turn while its rows land and it ticks
                failures: list[BaseException] = []

                def restart_all(failed: list[BaseException] = failures) -> None:
                    try:
                        kafka_cluster.rolling_restart()
                    except BaseException as e:  # reported by the test below
                        failed.append(e)

                rolling = threading.Thread(target=restart_all)
                rolling.start()
                time.sleep(2)
            rows = [r for r in held if r[1] == day]
            for part in (rows[: len(rows) // 2], rows[len(rows) // 2 :]):
                with psycopg.connect(url) as conn, conn.transaction():
                    insert_prices(conn, part)
                if rolling is not None:
                    time.sleep(10)
            tick = run(cluster_env, "tick", "--as-of", day.isoformat(), "--model-id", MODELS[0])
            assert tick.returncode == 0, tick.stderr[-2000:]
            if rolling is not None:
                rolling.join()
                assert not failures, f"the rolling restart did not complete: {failures[0]!r}"
        wait_for(lambda: all(live_tick_committed(url, d, partitions) for d in days), 300, "every live tick")
        assert_same_embeddings(stored(url), expected(url, ids, days, 63, MODELS), url)
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        for node in kafka_cluster.nodes:
            if not node.running_pid():
                kafka_cluster.start(node.node_id)
    lines = (tmp_path / "worker.log").read_text(errors="replace").splitlines()
    noisy = [line for line in lines if "ERROR" in line or "WARNING" in line or "WARN" in line]
    assert len(noisy) < 40, "\n".join(noisy[-40:])  # 20 here (763 in the run, a line per attempt)
