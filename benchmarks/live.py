"""The always-on service, measured: a warm worker with live capture, day after day of rows landing
in the outbox, each followed by `embedder tick`; latency from the tick to the last commit."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import psycopg

from backfill.blocks import plan
from backfill.outbox import enqueue_tick
from backfill.publisher import PricePublisher
from backfill.worker_process import worker_env
from shared.config import Settings
from shared.lag import LagMonitor
from shared.messages import LIVE_RUN, RowBatch
from streams.window import retention_days

WARM_DAYS_BEFORE = 260  # calendar days of history published before the measured days


def start_worker(settings: Settings, datadir: Path, capture: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "embedder.cli", "worker", "--data-dir", str(datadir)]
    if not capture:
        cmd.append("--no-capture")
    return subprocess.Popen(cmd, env=worker_env(settings) | {"EMBEDDER_OUTBOX_POLL_SECONDS": "0.05"},
                            stdout=open(datadir.parent / f"{datadir.name}.log", "ab"), stderr=subprocess.STDOUT)


def wait_ready(datadir: Path, timeout: float = 120.0) -> float:
    """Seconds until the worker's /readyz answers 200."""
    started = time.perf_counter()
    port_file = datadir / "web.port"
    while time.perf_counter() - started < timeout:
        if port_file.exists():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port_file.read_text().strip()}/readyz",
                                            timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"worker not ready after {timeout:.0f}s")


def wait_caught_up(settings: Settings, timeout: float = 600.0) -> None:
    monitor = LagMonitor(settings)
    try:
        deadline = time.monotonic() + timeout
        while monitor.sample().groups[0].lag > 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not catch up")
            time.sleep(0.5)
    finally:
        monitor.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def warm_live_windows(settings: Settings, url: str, before: date) -> int:
    """Publish the live run's history (every row from `before` minus the retention) as row batches."""
    start = before - timedelta(days=max(WARM_DAYS_BEFORE, retention_days(settings.window_days,
                                                                        settings.retention_slack_days)))
    with psycopg.connect(url) as conn:
        rows = conn.execute("""SELECT instrument_id, trade_date, close, volume FROM prices_daily
                               WHERE trade_date >= %s AND trade_date < %s ORDER BY trade_date, instrument_id""",
                            (start, before)).fetchall()
    publisher = PricePublisher(settings)
    try:
        for out in plan(rows, settings.partitions, [], block_days=14):
            publisher.row_batch(out.partition, RowBatch(LIVE_RUN, settings.window_days, out.rows))
        publisher.flush()
    finally:
        publisher.close()
    return len(rows)


def tick_latencies(settings: Settings, url: str, days: list[date], model_id: str) -> list[float]:
    """For each day: its rows land in the outbox (as the capture triggers would put them), then the
    tick; seconds from the tick to the commit of its last partition."""
    latencies = []
    with psycopg.connect(url, autocommit=True) as conn:
        for day in days:
            conn.execute("""INSERT INTO prices_outbox (instrument_id, trade_date, close, volume)
                            SELECT instrument_id, trade_date, close, volume FROM prices_daily
                            WHERE trade_date = %s ORDER BY instrument_id""", (day,))
            started = time.perf_counter()
            enqueue_tick(conn, day, settings.window_days, [model_id])
            while conn.execute("""SELECT count(*) FROM embedder_tick_commits
                                  WHERE run_id = 'live' AND as_of_date = %s""", (day,)).fetchone()[0] \
                    < settings.partitions:
                time.sleep(0.005)
            latencies.append(time.perf_counter() - started)
    return latencies


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
