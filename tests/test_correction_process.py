"""The correction process (`live.correction_process`): its reports survive the trip through its pipe unchanged,
and the worker keeps it running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import date

import psycopg
import pytest

from benchmarks.proc_cpu import processes
from live.correction_process import read_line, step_line
from live.corrections import Step
from shared.store.maintained_keys import MaintainedKey
from tests.support.cli import EMBEDDER, run
from tests.support.helpers import load_synthetic, wait_for
from tests.support.whole_table import exact, whole_table
from tests.support.workers import alive, children, start_live_worker, stop

CHILD = "live.correction_process"


def test_a_step_reads_back_as_it_was_written():
    keys = (
        MaintainedKey("A'; --", date(2016, 3, 1), "num-regime-core-v1", 63),
        MaintainedKey("é", date(2016, 3, 2), "m", 20),
    )
    step = Step(3, 2, 40, 11, 1, 27, 1, 0.25, keys)
    assert read_line(step_line(step) + "\n") == step


def test_the_queue_depth_and_anything_else_on_its_stdout():
    assert read_line('{"queue": 12}') == 12
    assert read_line("a line some library printed") is None
    assert read_line("[1, 2]") is None


@pytest.mark.slow
def test_a_correction_process_killed_mid_restatement_is_started_again_and_the_table_ends_exact(cli_env, tmp_path):
    """The worker keeps its correction process running: killed -9 while a restatement years back is being
    recomputed one instrument per transaction, a new one is started and finishes it, the table exact."""
    env = cli_env | {"EMBEDDER_CORRECTION_BATCH_INSTRUMENTS": "1"}
    url = env["DATABASE_URL"]
    load_synthetic(url, tmp_path, instruments=12, start=date(2018, 1, 1), end=date(2019, 12, 31), seed=5)
    run(env, "replay", "--direct", "--from", "2018-07-01", "--to", "2019-12-31", "--market-id", "US_EQ")
    worker = start_live_worker(env, tmp_path)
    try:
        wait_for(lambda: bootstrapped(url), 120, "the live bootstrap")
        wait_for(lambda: children(worker.pid, CHILD), 60, "the correction process")
        first = children(worker.pid, CHILD)
        with psycopg.connect(url) as conn:  # the platform restates a year of closes with plain SQL
            restated = conn.execute(
                "UPDATE prices_daily SET close = close * 1.01 WHERE trade_date BETWEEN '2018-03-01' AND '2019-03-01'"
            ).rowcount
        assert restated > 1000
        wait_for(lambda: queued(url) > 0, 60, "the restatement queued for the correction path")
        os.kill(first[0], signal.SIGKILL)
        wait_for(lambda: children(worker.pid, CHILD) not in ([], first), 60, "a new correction process")
        wait_for(lambda: exact(url), 300, "the whole table to equal the reference")
        assert worker.poll() is None
        last = children(worker.pid, CHILD)
        worker.kill()  # kill -9: the correction process must not outlive its worker (adopted by init)
        worker.wait(timeout=30)
        wait_for(lambda: not any(alive(pid) for pid in last), 30, "the correction process to end with its worker")
    finally:
        stop(worker)
    assert not children(worker.pid, CHILD)


def bootstrapped(url: str) -> bool:
    with psycopg.connect(url) as conn:
        loaded, queued_ = conn.execute("SELECT count(published_at), count(*) FROM embedder_bootstrap").fetchone()
    return queued_ > 0 and loaded == queued_


def queued(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM embedder_recompute_queue").fetchone()[0]


@pytest.mark.slow
def test_the_worker_a_replay_starts_for_its_run_runs_no_correction_process(cli_env, tmp_path):
    """The correction path and the parity audit are the always-on service's: the worker `embedder replay` starts for its
    run (none was consuming) runs the stream and its sink alone, and the run is whole."""
    url = cli_env["DATABASE_URL"]
    load_synthetic(url, tmp_path, instruments=6, start=date(2019, 1, 1), end=date(2019, 12, 31), seed=7)
    replay = subprocess.Popen(
        EMBEDDER + ["replay", "--from", "2019-06-03", "--to", "2019-12-31", "--market-id", "US_EQ"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers: set[int] = set()
    corrections: set[int] = set()
    while replay.poll() is None:  # every process the run started, while it runs
        for pid, fields, cmd in processes():
            if int(fields[1]) == replay.pid and "embedder.cli worker" in cmd:
                workers.add(pid)
        for pid in workers:
            corrections.update(children(pid, CHILD))
        time.sleep(0.01)
    out, err = replay.communicate()
    assert replay.returncode == 0, err[-3000:]
    assert workers, "the run started no worker of its own"
    assert not corrections
    stored, reference = whole_table(url)
    assert stored and stored == reference
