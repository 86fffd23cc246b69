"""Every long-running command stops promptly on SIGINT or SIGTERM, whatever the broker is doing (issue 27).

The broker is paused with SIGSTOP while the command runs (a request in flight never gets its answer, a
coordinator never replies): `lag --watch`, `lag --serve`, a replay waiting for its worker, an export, and the
worker (after its drain, bounded by EMBEDDER_STOP_GRACE_SECONDS). The bound asserted here is generous (a
hang is what it catches: before this, a SIGINT landing in kafka-python's network code was swallowed and the
command ran on for hours); `make bench` does not time it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager
from datetime import date

import pytest

from shared.broker.topics import ensure_topics
from tests.support.cli import EMBEDDER, run_command, settings_of
from tests.support.helpers import load_synthetic, wait_for
from tests.support.workers import alive, start_named_worker

BOUND = 10.0
"""Seconds a stopped command may take before the test calls it a hang (the target is 2 s)."""


@pytest.fixture
def broker_pid(local_services) -> int:
    if local_services is None:
        pytest.skip("the broker is not this project's local one, so the test cannot pause it")
    pid = local_services.kafka.running_pid()
    assert pid
    return pid


@contextmanager
def paused(pid: int):
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        EMBEDDER + list(args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def stopped_within(proc: subprocess.Popen, sig: int) -> tuple[float, int]:
    """Send `sig`; (seconds until the process exited, its exit code). Fails on a hang."""
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{proc.args[3:]} still ran {BOUND:.0f} s after signal {sig}") from None
    return time.monotonic() - sent, code


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("mode", ["--watch", "--serve"])
def test_lag_follow_modes_stop_promptly_with_the_broker_paused(cli_env, broker_pid, mode, sig):
    ensure_topics(settings_of(cli_env))
    args = ["lag", "--watch", "--json", "--interval", "0.5"] if mode == "--watch" else ["lag", "--serve", "0"]
    proc = start(cli_env, *args)
    try:
        if mode == "--watch":
            assert proc.stdout is not None and proc.stdout.readline()  # it reports
        else:
            assert proc.stderr is not None and "metrics" in proc.stderr.readline()
            time.sleep(1.0)
        with paused(broker_pid):
            time.sleep(1.5)  # its next sample is a request the broker never answers
            seconds, code = stopped_within(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0  # stopping is how these end


def test_a_replay_waiting_on_a_paused_broker_stops_promptly_and_its_worker_with_it(
    db_url, cli_env, broker_pid, tmp_path
):
    load_synthetic(db_url, tmp_path, instruments=40, start=date(2019, 1, 1), end=date(2019, 12, 31))
    proc = start(cli_env, "replay", "--from", "2019-06-01", "--to", "2019-12-31", "--market-id", "US_EQ")
    try:
        wait_for(lambda: _child_workers(proc.pid), 120, "the replay to start its worker")
        children = _child_workers(proc.pid)
        with paused(broker_pid):
            time.sleep(1.0)
            seconds, code = stopped_within(proc, signal.SIGTERM)
        assert code == 130
        assert "interrupted" in (proc.stderr.read() if proc.stderr else "")
        wait_for(lambda: not any(alive(c) for c in children), 60, "the run's worker to stop with its command")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_an_export_stops_promptly_and_leaves_no_file(db_url, cli_env, tmp_path):
    load_synthetic(db_url, tmp_path, instruments=60, start=date(2018, 1, 1), end=date(2019, 12, 31))
    direct = run_command(
        EMBEDDER + ["replay", "--direct", "--from", "2018-04-01", "--to", "2019-12-31", "--market-id", "US_EQ"], cli_env
    )
    assert direct.returncode == 0, direct.stderr[-2000:]
    target, partial = tmp_path / "out.csv", tmp_path / ".out.csv.partial"
    # The export writes into `partial` and renames it at its end. Made a FIFO that this test reads only a
    # little of, the export is certainly still writing when the signal comes (a file it could finish first).
    os.mkfifo(partial)
    reader = os.open(partial, os.O_RDONLY | os.O_NONBLOCK)
    proc = start(
        cli_env, "embeddings", "export", "--from", "2018-04-01", "--to", "2019-12-31", "--model-id",
        "numeric-simple-v1", "--format", "csv", "-o", str(target),
    )  # fmt: skip
    try:
        wait_for(lambda: _read_some(reader), 60, "the export to begin writing")
        seconds, code = stopped_within(proc, signal.SIGINT)
    finally:
        os.close(reader)
        if proc.poll() is None:
            proc.kill()
    assert code == 130
    assert not target.exists() and not partial.exists()


def _read_some(fd: int) -> bool:
    """Whether the writer at the other end of FIFO `fd` has written anything yet (reads a little of it)."""
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return False


def test_the_worker_stops_within_its_grace_with_the_broker_paused(cli_env, broker_pid, tmp_path):
    env = cli_env | {"EMBEDDER_STOP_GRACE_SECONDS": "3"}
    worker = start_named_worker(env, tmp_path, "w")
    try:
        wait_for(lambda: (tmp_path / "w" / "web.port").exists(), 60, "the worker to serve")
        time.sleep(2.0)
        with paused(broker_pid):
            time.sleep(1.0)
            seconds, code = stopped_within(worker, signal.SIGTERM)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert code in (0, 1)  # 1: the drain did not finish within the grace (nothing is lost: offsets wait)


def _child_workers(pid: int) -> list[int]:
    """The `embedder worker` processes `pid` started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and b"worker" in command:
            found.append(int(entry))
    return found
