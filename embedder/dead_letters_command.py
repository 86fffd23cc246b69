"""`embedder dead-letters`: what the stream refused, why, counted by reason; re-drive fixed rows."""

from __future__ import annotations

import json
from datetime import date

from rich.table import Table

from embedder.console import out
from shared.broker.dead_letters import DeadLetterReport, parse_since, read_dead_letters
from shared.contract.config import Settings
from shared.contract.messages import LIVE_RUN
from shared.store.db import connection
from shared.store.outbox import recapture


def run_dead_letters(settings: Settings, since: str | None, as_json: bool, limit: int, redrive: bool) -> None:
    report = read_dead_letters(settings, parse_since(since) if since else None, limit)
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_report(report)
    if redrive:
        keys = redrivable(report)
        with connection(settings.database_url) as conn:
            sent = recapture(conn, keys)
        out.print(
            f"re-driven: {sent} live row(s) captured again as prices_daily holds them now "
            f"({len(keys) - sent} no longer in prices_daily: nothing to do); rows that still fail "
            "are dead-lettered again",
            highlight=False,
        )


def redrivable(report: DeadLetterReport) -> list[tuple[str, date]]:
    """(instrument_id, trade_date) of the live rows among the report's records (replays are re-run instead)."""
    keys = set()
    for letter in report.records:
        if letter.run == LIVE_RUN and letter.instrument_id and letter.trade_date:
            try:
                keys.add((letter.instrument_id, date.fromisoformat(letter.trade_date)))
            except ValueError:
                continue
    return sorted(keys)


def print_report(report: DeadLetterReport) -> None:
    scope = f" since {report.since}" if report.since else ""
    out.print(f"dead letters{scope}: {report.total} ({report.distinct_rows} distinct)", highlight=False)
    if not report.total:
        return
    by_reason = Table(title="by reason", title_justify="left")
    by_reason.add_column("count", justify="right", no_wrap=True)
    by_reason.add_column("reason", overflow="fold")
    for reason, count in report.by_reason.most_common():
        by_reason.add_row(str(count), reason)
    out.print(by_reason)
    shown = Table(title=f"newest {len(report.records)}", title_justify="left")
    for column in ("time", "source", "run", "instrument", "trade_date", "reason"):
        shown.add_column(column, no_wrap=column != "reason", overflow="fold")
    for r in report.records:
        shown.add_row(r.time, r.source, r.run or "-", r.instrument_id or "-", r.trade_date or "-", r.reason)
    out.print(shown)
