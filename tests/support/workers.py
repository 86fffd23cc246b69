"""Workers as subprocesses (started, probed over HTTP, stopped) and the waits around them."""

from __future__ import annotations

import signal
import subprocess
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path

import psycopg

from benchmarks.proc_cpu import processes
from shared.broker.topics import admin_client
from tests.support.cli import EMBEDDER, run, settings_of
from tests.support.helpers import wait_for
from tests.support.markets import MODELS


def get(url: str) -> tuple[int, bytes]:
    """An HTTP GET: (status, body), errors included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def children(pid: int, marker: str) -> list[int]:
    """The processes whose parent is `pid` and whose command line names `marker`."""
    return [child for child, fields, cmd in processes() if int(fields[1]) == pid and marker in cmd]


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_web_worker(
    env: dict[str, str], tmp_path: Path, name: str = "w", capture: bool = False
) -> tuple[subprocess.Popen, str]:
    """A worker (no live capture unless asked) and the base URL of its web server, once it serves."""
    datadir = tmp_path / name
    worker = subprocess.Popen(
        EMBEDDER + ["worker", "--capture" if capture else "--no-capture", "--data-dir", str(datadir)],
        env=env,
        stdout=open(tmp_path / f"{name}.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    port_file = datadir / "web.port"
    wait_for(port_file.exists, 60, "the worker's web port")
    return worker, f"http://127.0.0.1:{port_file.read_text().strip()}"


def start_named_worker(
    env: dict[str, str], tmp_path: Path, name: str, capture: bool = False, loglevel: str | None = None
) -> subprocess.Popen:
    """A worker (live capture only if asked), its state in tmp_path/name (a restart reuses it), its log appended
    (at `loglevel`, else the worker's default)."""
    return subprocess.Popen(
        EMBEDDER
        + ["worker", "--capture" if capture else "--no-capture", "--data-dir", str(tmp_path / name)]
        + (["--loglevel", loglevel] if loglevel else []),
        env=env,
        stdout=open(tmp_path / f"{name}.log", "ab"),
        stderr=subprocess.STDOUT,
    )


def start_live_worker(env: dict[str, str], tmp_path: Path) -> subprocess.Popen:
    """The always-on worker with live capture, its state and log under tmp_path."""
    return subprocess.Popen(
        EMBEDDER + ["worker", "--data-dir", str(tmp_path / "state")],
        env=env,
        stdout=open(tmp_path / "worker.log", "wb"),
        stderr=subprocess.STDOUT,
    )


def stop(worker: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within a minute."""
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()


def stop_if_running(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to a process still running and wait for it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(timeout=60)


def group_members(env: dict[str, str]) -> int:
    """Members of a Stable group that each hold some prices partitions (0 while it rebalances).

    Starting work in the middle of a rebalance can leave faust-streaming 0.15.3 with a worker that
    never fetches its newly assigned partitions; the tests start on a stable group.
    """
    from kafka.errors import CoordinatorNotAvailableError

    admin = admin_client(settings_of(env))
    try:
        groups = admin.describe_groups([env["EMBEDDER_APP_ID"]])
    except CoordinatorNotAvailableError:  # a cluster just started has not placed the group's coordinator yet
        return 0
    finally:
        admin.close()
    count = 0
    for g in groups.values():
        if g.get("group_state") != "Stable":
            return 0
        for m in g.get("members") or []:
            topics = {
                a["topic"]
                for a in (m.get("member_assignment") or {}).get("assigned_partitions", [])
                if a.get("partitions")
            }
            if env["EMBEDDER_PRICES_TOPIC"] not in topics:
                return 0
            count += 1
    return count


def replay_ticks_committed(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM embedder_tick_commits WHERE run_id <> 'live'").fetchone()[0]


def live_tick_committed(url: str, as_of: date, partitions: int) -> bool:
    with psycopg.connect(url) as conn:
        return (
            conn.execute(
                "SELECT count(*) FROM embedder_tick_commits WHERE run_id = 'live' AND as_of_date = %s", (as_of,)
            ).fetchone()[0]
            >= partitions
        )


def tick_live(env: dict[str, str], url: str, days: list[date]) -> None:
    """`embedder tick` for each day, then wait until the last one is committed on every partition."""
    for d in days:
        run(env, "tick", "--as-of", d.isoformat(), "--model-id", MODELS[0], "--model-id", MODELS[1])
    wait_for(lambda: live_tick_committed(url, days[-1], int(env["EMBEDDER_PARTITIONS"])), 180, "the live ticks")
