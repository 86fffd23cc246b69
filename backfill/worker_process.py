"""Starting a worker for a replay when no worker is consuming, and stopping it afterwards."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kafka.errors import KafkaError

from shared.config import Settings
from shared.topics import admin_client


def worker_running(settings: Settings) -> bool:
    """True when the worker group has members (a worker is consuming)."""
    admin = admin_client(settings)
    try:
        groups = admin.describe_groups([settings.app_id])
        return any(g.get("members") for g in groups.values())
    except KafkaError:
        return False
    finally:
        admin.close()


@contextmanager
def worker_for_run(settings: Settings, log_path: Path | None = None) -> Iterator[bool]:
    """Yield True if a worker was started here (stopped with SIGTERM on exit), False if one ran already."""
    if worker_running(settings):
        yield False
        return
    datadir = Path(tempfile.mkdtemp(prefix="embedder-replay-worker-"))
    log = open(log_path or datadir / "worker.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedder.cli", "worker", "--no-capture", "--data-dir", str(datadir)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=os.environ.copy(),
    )
    try:
        yield True
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
