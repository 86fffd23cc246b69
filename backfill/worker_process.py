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


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child worker exactly these settings."""
    return os.environ | {
        "DATABASE_URL": settings.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "EMBEDDER_APP_ID": settings.app_id,
        "EMBEDDER_PRICES_TOPIC": settings.prices_topic,
        "EMBEDDER_EMBEDDINGS_TOPIC": settings.embeddings_topic,
        "EMBEDDER_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
        "EMBEDDER_PARTITIONS": str(settings.partitions),
        "EMBEDDER_WINDOW_DAYS": str(settings.window_days),
        "EMBEDDER_RETENTION_SLACK_DAYS": str(settings.retention_slack_days),
        "EMBEDDER_SINK_BATCH_SIZE": str(settings.sink_batch_size),
        "EMBEDDER_SINK_BATCH_SECONDS": str(settings.sink_batch_seconds),
        "EMBEDDER_WEB_PORT": "0",  # beside a running service: any free port
    }


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
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=worker_env(settings),
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
