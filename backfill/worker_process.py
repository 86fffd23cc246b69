"""Starting a worker for a replay when no worker is consuming, and stopping it afterwards."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from kafka.errors import KafkaError

from shared.broker.kafka_retry import with_retries
from shared.broker.lag import LagMonitor
from shared.broker.topics import admin_client
from shared.contract.config import Settings, settings_env
from shared.contract.errors import EmbedderError, ServiceUnavailable
from shared.signals import stop_with_parent

log = logging.getLogger("embedder.replay")

ONE_SHOT_COMMIT_SECONDS = 0.2
"""How often the worker started for a run commits its offsets: after the run the command waits for its group to have
no lag, and at faust's 2.8 s that wait was most of a short run's time (3.9 s of an 8 s month)."""


class WorkerChild(Protocol):
    """The worker process a run started: a `subprocess.Popen`, or one forked from the command
    (`embedder.worker_fork.ForkedWorker`)."""

    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


Launch = Callable[[list[str], dict[str, str], BinaryIO], WorkerChild]
"""Starts `embedder ARGS` (a worker) with the environment given, its output to the log given."""


def exec_worker(args: list[str], env: dict[str, str], log_file: BinaryIO) -> WorkerChild:
    """A new Python process running `embedder ARGS` (`python -m embedder.cli`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "embedder.cli", *args],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        preexec_fn=stop_with_parent,
    )


def worker_running(settings: Settings) -> bool:
    """True when the worker group has members (a worker is consuming); asks again while a broker is lost."""

    def attempt() -> bool:
        admin = admin_client(settings)
        try:
            groups = admin.describe_groups([settings.app_id])
            return any(g.get("members") for g in groups.values())
        finally:
            admin.close()

    try:
        return with_retries("looking for a worker of the group", attempt, deadline_seconds=30.0)
    except (KafkaError, OSError, ServiceUnavailable):
        return False


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child worker exactly these settings (all of them:
    `shared.contract.config.settings_env`), on any free web port beside a running service."""
    return os.environ | settings_env(settings) | {"EMBEDDER_WEB_PORT": "0"}


def wait_until_ready(proc: WorkerChild, datadir: Path, timeout: float = 120.0) -> None:
    """Block until the worker's /readyz answers 200; raise if it exited first (its log's tail in the error). A
    one-shot replay publishes while its worker starts: messages that arrive during faust's startup recovery are
    kept (faust-streaming 0.15.3 lost them; fixed in streams/faust_fixes.py, fix 1, and tested there)."""
    deadline = time.monotonic() + timeout
    port_file = datadir / "web.port"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (datadir / "worker.log").read_text(errors="replace")[-1500:]
            raise EmbedderError(f"the worker started for this run exited with {proc.returncode}: {tail}")
        if port_file.exists():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port_file.read_text().strip()}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
        time.sleep(0.2)
    raise EmbedderError(f"the worker started for this run was not ready after {timeout:.0f}s")


def wait_caught_up(settings: Settings, timeout: float) -> bool:
    """Wait until the worker group has committed every message of its topics (lag 0); False on timeout."""
    monitor = LagMonitor(settings)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if monitor.sample().groups[0].lag == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
    finally:
        monitor.close()


@dataclass
class RunWorker:
    """The worker a run is consumed by: `started` when this command started it (else one ran already).
    `ready()` blocks until the started worker serves (at once for one that ran already), raising if it exited."""

    started: bool
    ready: Callable[[], None] = lambda: None


@contextmanager
def worker_for_run(
    settings: Settings,
    log_path: Path | None = None,
    settle_seconds: float = 30.0,
    ready_first: bool = True,
    launch: Launch = exec_worker,
) -> Iterator[RunWorker]:
    """Yield the run's worker: one started here if none is consuming (stopped with SIGTERM on exit; the stream and
    its sink only, `embedder worker --for-run`: no correction path or parity audit, the always-on service's). With
    `ready_first`, only once it is ready; else at once, so the command reads and publishes while the worker
    starts (its imports and its tables' recovery: ~1.7 s of every one-shot replay; messages published before
    it joins wait in the topic, and it reads partitions without a committed offset from their beginning), and
    calls `ready()` before it waits for the run.

    After a run that ended well, the worker it started is stopped only once it has committed every
    message (the run's end messages included, up to `settle_seconds`): a one-shot replay leaves its
    group with no lag behind it, so `embedder lag` says OK and no alert pages for a consumer that was
    never meant to stay.

    `launch` starts the worker: a new Python process by default; `embedder replay` forks it from itself
    (`embedder.worker_fork`), so the worker starts with the modules the command imported already."""
    if worker_running(settings):
        yield RunWorker(False)
        return
    datadir = Path(tempfile.mkdtemp(prefix="embedder-replay-worker-"))
    log_file = open(log_path or datadir / "worker.log", "ab")
    one_shot = settings.model_copy(update={"commit_interval_seconds": ONE_SHOT_COMMIT_SECONDS})
    proc = launch(["worker", "--for-run", "--data-dir", str(datadir)], worker_env(one_shot), log_file)
    ended_well = False
    try:
        if ready_first:
            wait_until_ready(proc, datadir)
        yield RunWorker(True, lambda: wait_until_ready(proc, datadir))
        wait_caught_up(settings, settle_seconds)
        ended_well = True
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
        forget_state_folder(datadir, keep=not ended_well)


def forget_state_folder(datadir: Path, keep: bool) -> None:
    """Remove the state folder of a worker started for a run (its RocksDB tables, its log): the run's windows are
    in its changelogs, and every run would otherwise leave one in the temporary directory. A run that failed keeps
    it, so its log can be read; where is logged."""
    if keep:
        log.warning("the state and log of the worker started for this run are kept in %s", datadir)
        return
    shutil.rmtree(datadir, ignore_errors=True)
