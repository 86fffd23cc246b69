"""Scaling out and back (issue 18): `embedder live repartition N` during live days, then a worker joining and
another leaving while days land: every tick commits on the new layout and the table equals the batch
path's embedding of the same prices (real Kafka, real PostgreSQL, the real worker)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import date

import psycopg
import pytest

from tests.support.cli import EMBEDDER, run, run_command
from tests.support.helpers import assert_same_embeddings, expected, load_synthetic, stored, wait_for
from tests.support.markets import MODELS
from tests.support.platform import insert_prices
from tests.support.workers import live_tick_committed, start_named_worker

IDS = 16


def land_day(env: dict[str, str], url: str, held: list[tuple], day: date) -> None:
    """The platform writes a day with plain INSERTs (captured), then asks for its tick."""
    with psycopg.connect(url) as conn, conn.transaction():
        insert_prices(conn, [r for r in held if r[1] == day])
    run(env, "tick", "--as-of", day.isoformat(), "--model-id", MODELS[0], "--model-id", MODELS[1])


def start_worker(env: dict[str, str], tmp_path, name: str) -> subprocess.Popen:
    return start_named_worker(env, tmp_path, name, capture=True)


@pytest.mark.slow
def test_repartition_and_workers_joining_and_leaving_during_live_days(db_url, cli_env, tmp_path):
    url = db_url
    load_synthetic(url, tmp_path, instruments=IDS, start=date(2019, 1, 1))
    with psycopg.connect(url) as conn:
        days = [r[0] for r in conn.execute("SELECT DISTINCT trade_date FROM prices_daily ORDER BY 1 DESC LIMIT 6")][
            ::-1
        ]
        held = conn.execute(
            "DELETE FROM prices_daily WHERE trade_date >= %s RETURNING instrument_id, trade_date, close, volume",
            (days[0],),
        ).fetchall()
        ids = [r[0] for r in conn.execute("SELECT instrument_id FROM instruments ORDER BY 1")]
    before = int(cli_env["EMBEDDER_PARTITIONS"])
    first = start_worker(cli_env, tmp_path, "w1")
    second = None
    try:
        land_day(cli_env, url, held, days[0])
        wait_for(lambda: live_tick_committed(url, days[0], before), 180, "the first live tick")

        started = time.monotonic()
        moved = run(cli_env, "live", "repartition", "3")
        assert "-> 3 partitions (generation 1)" in moved.stdout, moved.stdout + moved.stderr
        land_day(cli_env, url, held, days[1])  # at once: the worker is still on the old layout
        wait_for(lambda: live_tick_committed(url, days[1], 3), 240, "a tick on the new layout")
        print(
            f"\nrepartition 4 -> 3 with a day landing at once: its tick committed {time.monotonic() - started:.1f} s "
            "after the command"
        )
        assert first.poll() is None  # the same process, started again on the new layout
        log = (tmp_path / "w1.log").read_text(errors="replace")
        assert "moved to 3 partitions (layout generation 1" in log
        assert "moves to live layout generation 1" in log  # its windows were reloaded from prices_daily
        again = run(cli_env, "live", "repartition", "3")
        assert "already runs 3 partitions" in again.stdout

        second = start_worker(cli_env, tmp_path, "w2")  # a worker joins while days land
        land_day(cli_env, url, held, days[2])
        land_day(cli_env, url, held, days[3])
        wait_for(lambda: live_tick_committed(url, days[3], 3), 240, "the ticks with two workers")
        first.send_signal(signal.SIGTERM)  # and one leaves
        first.wait(timeout=90)
        land_day(cli_env, url, held, days[4])
        land_day(cli_env, url, held, days[5])
        wait_for(lambda: all(live_tick_committed(url, d, 3) for d in days[1:]), 300, "every tick")
        assert_same_embeddings(stored(url), expected(url, ids, days, 63, list(MODELS)), url)

        status = run(cli_env, "status", "--json")
        assert json.loads(status.stdout)["layout"] == {"partitions": 3, "generation": 1}
        lag_cmd = EMBEDDER + ["lag", "--json", "--samples", "2", "--interval", "0.5"]
        readings: list[subprocess.CompletedProcess] = []

        def lag_ok() -> bool:  # the group commits its offsets on a timer: OK once it has
            readings.append(run_command(lag_cmd, cli_env, timeout=120))
            return readings[-1].returncode == 0

        wait_for(lag_ok, 60, "the group's lag to be OK")
        report = json.loads(readings[-1].stdout)
        assert {p["topic"] for g in report["groups"] for p in g["partitions"]} >= {
            f"{cli_env['EMBEDDER_PRICES_TOPIC']}.g1"
        }
    finally:
        for worker in (first, second):
            if worker is not None and worker.poll() is None:
                worker.terminate()
                worker.wait(timeout=90)
