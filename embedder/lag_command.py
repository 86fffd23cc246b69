"""`embedder lag`: the lag report as a table, as JSON, or refreshing (`--watch`)."""
from __future__ import annotations

import json
import time

from rich.live import Live
from rich.table import Table

from embedder.console import out
from shared.config import Settings
from shared.lag import LagMonitor, LagReport

STATUS_STYLE = {"OK": "green", "WARN": "yellow", "STALL": "red", "STOP": "bold red", "ERR": "bold magenta"}


def fmt(value, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def lag_table(report: LagReport) -> Table:
    """One row per partition, with its group's state and status in the title."""
    titles = [f"group {g.group}: {g.state}, {g.members} member(s), "
              f"[{STATUS_STYLE[g.status]}]{g.status}[/], lag {g.lag} msgs / {fmt(g.lag_seconds, ' s')}"
              + (f" ({g.error})" if g.error else "") for g in report.groups]
    table = Table(title="\n".join(titles), title_justify="left")
    for column in ("role", "topic", "partition", "committed", "end", "lag", "lag s", "rate/s", "catch-up s", "status"):
        table.add_column(column, justify="left" if column in ("role", "topic", "status") else "right")
    for g in report.groups:
        for p in g.partitions:
            table.add_row(p.role, p.topic, str(p.partition), fmt(p.committed), str(p.end), str(p.lag),
                          fmt(p.lag_seconds), fmt(p.rate), fmt(p.eta_seconds),
                          f"[{STATUS_STYLE[p.status]}]{p.status}[/]")
    return table


def watch_reports(monitor: LagMonitor, as_json: bool, interval: float) -> None:
    """Until Ctrl-C: a refreshing table on a terminal; otherwise one table (or JSON line) per sample."""
    try:
        if out.is_terminal and not as_json:
            with Live(console=out, auto_refresh=False) as live:
                while True:
                    live.update(lag_table(monitor.sample()), refresh=True)
                    time.sleep(interval)
        while True:
            report = monitor.sample()
            if as_json:
                print(json.dumps(report.as_json()), flush=True)
            else:
                out.print(lag_table(report))
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


def run_lag(settings: Settings, as_json: bool, watch: bool, samples: int, interval: float, window: float) -> int:
    """Sample `samples` times `interval` seconds apart (or forever with --watch); exit 1 on ERR."""
    monitor = LagMonitor(settings, window_seconds=window)
    try:
        if watch:
            watch_reports(monitor, as_json, interval)
            return 0
        report = monitor.sample()
        for _ in range(samples - 1):
            time.sleep(interval)
            report = monitor.sample()
        if as_json:
            print(json.dumps(report.as_json(), indent=2))
        else:
            out.print(lag_table(report))
        return 1 if any(g.status == "ERR" for g in report.groups) else 0
    finally:
        monitor.close()
