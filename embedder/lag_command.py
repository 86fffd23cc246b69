"""`embedder lag`: the lag report as a table, as JSON, refreshing (`--watch`), or as Prometheus metrics
(`--serve PORT`); the exit code says the status (see `embedder.exit_codes.LAG_EXIT_CODES`)."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from rich.live import Live
from rich.table import Table

from embedder.console import err, out
from embedder.exit_codes import LAG_EXIT_CODES
from embedder.stopping import Stop, run_until_stopped
from shared.broker.lag import LagMonitor, LagReport
from shared.broker.lag_status import LagStatus, worst
from shared.contract.config import Settings
from shared.metrics import LagMetrics

STATUS_STYLE = {
    LagStatus.OK: "green",
    LagStatus.WARN: "yellow",
    LagStatus.REWIND: "magenta",
    LagStatus.STALL: "red",
    LagStatus.STOP: "bold red",
    LagStatus.ERR: "bold magenta",
}
COLUMNS = ("role", "topic", "partition", "committed", "end", "lag", "lag s", "rate/s", "catch-up s", "status")


def fmt(value, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def lag_table(report: LagReport) -> Table:
    """One row per partition, with its group's state and status in the title. Columns never wrap or
    shorten their headers (a table piped to a file stays readable)."""
    titles = [
        f"group {g.group}: {g.state}, {g.members} member(s), "
        f"[{STATUS_STYLE[g.status]}]{g.status}[/], lag {g.lag} msgs / {fmt(g.lag_seconds, ' s')}"
        + (f" ({g.error})" if g.error else "")
        for g in report.groups
    ]
    table = Table(title="\n".join(titles), title_justify="left")
    for column in COLUMNS:
        table.add_column(
            column,
            justify="left" if column in ("role", "topic", "status") else "right",
            no_wrap=True,
            min_width=len(column),
        )
    for g in report.groups:
        for p in g.partitions:
            table.add_row(
                p.role,
                p.topic,
                str(p.partition),
                fmt(p.committed),
                str(p.end),
                str(p.lag),
                fmt(p.lag_seconds),
                fmt(p.rate),
                fmt(p.eta_seconds),
                f"[{STATUS_STYLE[p.status]}]{p.status}[/]",
            )
    return table


def exit_code(report: LagReport) -> int:
    return LAG_EXIT_CODES[worst([g.status for g in report.groups])]


def watch_reports(monitor: LagMonitor, as_json: bool, interval: float, stop: Stop) -> None:
    """Until stopped: a refreshing table on a terminal; otherwise one table (or JSON line) per sample."""
    if out.is_terminal and not as_json:
        with Live(console=out, auto_refresh=False) as live:
            while not stop.event.is_set():
                live.update(lag_table(monitor.sample()), refresh=True)
                stop.wait(interval)
        return
    while not stop.event.is_set():
        report = monitor.sample()
        if as_json:
            print(json.dumps(report.as_json()), flush=True)
        else:
            out.print(lag_table(report))
        stop.wait(interval)


def serve_metrics(monitor: LagMonitor, port: int, host: str, interval: float, stop: Stop) -> None:
    """A Prometheus endpoint of the group's lag, read from the broker alone: it keeps reporting (STOP,
    growing lag) while every worker is down. Until stopped."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    metrics = LagMetrics.create(registry)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            body, kind, code = (
                (generate_latest(registry), CONTENT_TYPE_LATEST, 200)
                if path == "/metrics"
                else (b"ok\n", "text/plain", 200)
                if path == "/livez"
                else (b"not found\n", "text/plain", 404)
            )
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    import threading

    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()
    err.print(
        f"lag of group {monitor.group} on http://{host}:{server.server_address[1]}/metrics "
        f"(every {interval:g} s; Ctrl-C stops)",
        highlight=False,
    )
    while not stop.event.is_set():
        metrics.record(monitor.sample())
        stop.wait(interval)


def unreadable(report: LagReport) -> bool:
    """A group could not be read at all (ERR): the broker refused us or did not answer."""
    return any(group.status == LagStatus.ERR for group in report.groups)


def run_lag(
    settings: Settings,
    as_json: bool,
    watch: bool,
    samples: int,
    interval: float,
    window: float,
    group: str | None = None,
    serve: int | None = None,
    host: str = "127.0.0.1",
) -> int:
    """Sample `samples` times `interval` seconds apart (or forever with --watch / --serve), and on while a
    lagging group's committed offset has not moved for long enough to tell a STALL from a commit not
    yet made (`STALL_EVIDENCE_SECONDS`); a reading that fails (ERR) ends a one-shot run;
    the exit code is the worst group's status (0 OK, 3 WARN, 4 REWIND, 5 STALL, 6 STOP, 1 ERR)."""
    monitor = LagMonitor(settings, window_seconds=window, group=group)
    if serve is not None or watch:  # until Ctrl-C or SIGTERM, promptly whatever the broker is doing

        def follow(stop: Stop) -> None:
            if serve is not None:
                serve_metrics(monitor, serve, host, interval, stop)
            else:
                watch_reports(monitor, as_json, interval, stop)

        def cleanup() -> None:
            out.show_cursor(True)  # a refreshing table hid it
            monitor.close()

        return run_until_stopped(follow, cleanup=cleanup, stopped_code=0)
    try:
        report = monitor.sample()
        for _ in range(samples - 1):
            if unreadable(report):  # a refusal, or no broker for the sample's 10 s: another would wait again
                break
            time.sleep(interval)
            report = monitor.sample()
        while report.verdict_pending_seconds > 0:  # an unmoved offset over a short span is no STALL yet
            time.sleep(min(interval, report.verdict_pending_seconds))
            report = monitor.sample()
        if as_json:
            print(json.dumps(report.as_json(), indent=2))
        else:
            out.print(lag_table(report))
        return exit_code(report)
    finally:
        monitor.close()
