"""The worker's web port: /metrics, /livez, /readyz, the lag page (/lag) and its data (/lag.json).

A small threaded HTTP server beside the Faust event loop, so health answers
even while the loop is busy. A sampler thread reads the group's lag from the
broker (shared/broker/lag.py) every few seconds, updates the lag gauges and keeps the
recent samples for the page's trend chart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared.broker.lag import LagMonitor, LagReport
from shared.broker.lag_status import LagStatus
from shared.contract.config import Settings
from shared.metrics import StreamMetrics
from shared.store.tick_commits import recent_runs

log = logging.getLogger("embedder.web")
PAGE = Path(__file__).with_name("lag_page.html")
HISTORY_SECONDS = 15 * 60


class WorkerStatus:
    """What the web thread reports: filled by the Faust signals and the lag sampler."""

    def __init__(self) -> None:
        self.assigned: int = 0
        self.ready = threading.Event()  # partitions assigned and their tables recovered
        self.latest: LagReport | None = None
        self.history: deque[dict] = deque()
        self.lock = threading.Lock()

    def record(self, report: LagReport) -> None:
        totals: dict[str, int] = {}
        for g in report.groups:
            for p in g.partitions:
                totals[p.role] = totals.get(p.role, 0) + p.lag
        with self.lock:
            self.latest = report
            self.history.append({"t": round(report.at, 1), **totals})
            while self.history and report.at - self.history[0]["t"] > HISTORY_SECONDS:
                self.history.popleft()


class LagSampler(threading.Thread):
    """Samples lag every `interval` seconds into the status and the gauges, until stopped."""

    def __init__(self, settings: Settings, status: WorkerStatus, metrics: StreamMetrics, interval: float):
        super().__init__(name="lag-sampler", daemon=True)
        self.monitor = LagMonitor(settings)
        self.settings = settings
        self.status, self.metrics, self.interval = status, metrics, interval
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            report = self.monitor.sample()
            self.status.record(report)
            self.metrics.lag.record(report)
            self.metrics.ready.set(1 if readiness(self.settings, self.status, self.interval)["ready"] else 0)
            self.stop.wait(self.interval)
        self.monitor.close()


def database_reachable(url: str) -> tuple[bool, str]:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True, "ok"
    except psycopg.Error as e:
        return False, type(e).__name__


def readiness(settings: Settings, status: WorkerStatus, interval: float) -> dict:
    """Kafka readable (a recent lag sample without error), Postgres reachable, partitions assigned."""
    latest = status.latest
    kafka_ok = (
        latest is not None
        and time.time() - latest.at < max(3 * interval, 15)
        and all(g.status != LagStatus.ERR for g in latest.groups)
    )
    pg_ok, pg_detail = database_reachable(settings.database_url)
    checks = {
        "kafka": "ok" if kafka_ok else (latest.groups[0].error if latest and latest.groups else "no sample yet"),
        "postgres": pg_detail,
        "partitions_assigned": status.assigned,
    }
    checks["tables_recovered"] = status.ready.is_set()
    checks["ready"] = kafka_ok and pg_ok and status.assigned > 0 and status.ready.is_set()
    return checks


def runs_progress(settings: Settings, latest: LagReport | None) -> list[dict]:
    """Replays still running (or finished in the last 10 minutes): committed vs target offsets."""
    try:
        with psycopg.connect(settings.database_url, connect_timeout=2) as conn:
            rows = recent_runs(conn)
    except psycopg.Error:
        return []
    committed = {
        p.partition: p.committed or 0
        for g in (latest.groups if latest else [])
        for p in g.partitions
        if p.role == "worker"
    }
    out = []
    for run_id, started, completed, start, target in rows:
        total = done = None
        if start is not None and target is not None:  # still publishing: the target is not known yet
            total = sum(target[p] - start.get(p, 0) for p in target)
            done = sum(max(0, min(committed.get(int(p), 0), target[p]) - start.get(p, 0)) for p in target)
            if completed:
                done = total
        out.append(
            {
                "run": run_id,
                "started": started.isoformat(timespec="seconds"),
                "completed": completed.isoformat(timespec="seconds") if completed else None,
                "committed": done,
                "target": total,
            }
        )
    return out


def lag_payload(settings: Settings, status: WorkerStatus, metrics: StreamMetrics) -> dict:
    with status.lock:
        latest, history = status.latest, list(status.history)
    last_upsert = metrics.db_last_upsert._value.get()  # noqa: SLF001 (prometheus-client has no getter)
    return {
        "report": latest.as_json() if latest else None,
        "history": history,
        "runs": runs_progress(settings, latest),
        "db_last_upsert": (
            datetime.fromtimestamp(last_upsert, UTC).isoformat(timespec="seconds") if last_upsert else None
        ),
        "db_freshness_seconds": round(time.time() - last_upsert, 1) if last_upsert else None,
    }


SHUTDOWN_POLL_SECONDS = 0.05
"""How often the server's loop looks for a shutdown: at socketserver's 0.5 s, stopping the web port was most of
a worker's stop (0.37 of 0.58 s, measured), which every one-shot replay waits for."""


def serve(
    settings: Settings,
    registry: CollectorRegistry,
    metrics: StreamMetrics,
    status: WorkerStatus,
    interval: float,
    port: int,
    host: str = "127.0.0.1",
) -> ThreadingHTTPServer:
    """Start the server in a daemon thread; `server.server_address[1]` is the bound port."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the worker's log for the stream
            pass

        def send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?")[0]
            if path == "/metrics":
                self.send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/livez":
                self.send(200, b"ok\n", "text/plain")
            elif path == "/readyz":
                checks = readiness(settings, status, interval)
                self.send(200 if checks["ready"] else 503, json.dumps(checks).encode(), "application/json")
            elif path == "/lag.json":
                self.send(200, json.dumps(lag_payload(settings, status, metrics)).encode(), "application/json")
            elif path in ("/", "/lag"):
                self.send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
            else:
                self.send(404, b"not found\n", "text/plain")

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(SHUTDOWN_POLL_SECONDS,), name="web", daemon=True).start()
    return server
