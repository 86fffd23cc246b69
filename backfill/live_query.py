"""Answering a replay from the live windows when they already hold what it needs.

The usual call of the platform's command is one recent as_of (the latest day, a
month end). The live run's windows hold every ACTIVE EQUITY instrument's rows
back to 3 x window + slack days before its newest row, so such a request needs
no look-back republished: a *query tick* is queued in the outbox (behind every
captured row, so it sees all committed data), the worker computes the selection
from the live state and records the output under the query's own run id, and the
command waits for those completions as it would for a replay.

It applies when a worker relays the live run (someone holds the relay lock), every
selected instrument is one the live run loads (ACTIVE EQUITY), the window is the
live one, and the look-back of the earliest date lies inside what the windows keep.
Otherwise the replay publishes its rows into a run of its own, as before.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import date

import psycopg
from psycopg.types.json import Jsonb

from backfill.bootstrap import queue_bootstrap
from backfill.completion import ReplayHooks, StreamResult, wait_for_run
from backfill.outbox import relay_holder
from backfill.selection import RunSelection
from shared.config import Settings
from shared.db import connection
from shared.encoder import LOOKBACK_FACTOR, retention_days
from shared.instruments import SELECTABLE, newest_trade_date_sql
from shared.messages import MAX_MESSAGE_BYTES
from shared.validation import latest_trade_date

MAX_QUERY_DATES = 400


@dataclass(frozen=True)
class LiveAnswer:
    """Whether the live windows can answer a selection, and if not, why."""

    ok: bool
    reason: str = ""


def live_can_answer(conn: psycopg.Connection, settings: Settings, selection: RunSelection, ids: list[str],
                    dates: list[date]) -> LiveAnswer:
    """Can the live run's windows give the selection's embeddings at `dates`, exactly as a replay would?"""
    if not ids or not dates:
        return LiveAnswer(False, "nothing selected")
    if selection.window_days != settings.window_days:
        return LiveAnswer(False, f"the live windows are for window_days {settings.window_days}")
    if len(dates) > MAX_QUERY_DATES:
        return LiveAnswer(False, f"more than {MAX_QUERY_DATES} as_of dates")
    if selection.instrument_ids and len(json.dumps(ids)) > MAX_MESSAGE_BYTES // 2:
        return LiveAnswer(False, "too many instrument ids for one query")
    if relay_holder(conn) is None:
        return LiveAnswer(False, "no worker relays the live run")
    selectable, newest = conn.execute(
        f"""SELECT count(*) FILTER (WHERE {SELECTABLE}), max({newest_trade_date_sql('i', '%s')})
            FROM instruments i WHERE i.instrument_id = ANY(%s)""", (latest_trade_date(), ids)).fetchone()
    if selectable < len(ids):
        return LiveAnswer(False, "some selected instruments are not ACTIVE EQUITY (the live run does not load them)")
    keep = retention_days(settings.window_days, settings.retention_slack_days)
    if newest is not None and (min(dates) - newest).days + keep < LOOKBACK_FACTOR * selection.window_days:
        return LiveAnswer(False, f"{min(dates)} is older than the live windows keep")
    return LiveAnswer(True)


def enqueue_query(conn: psycopg.Connection, settings: Settings, selection: RunSelection, dates: list[date],
                  ids: list[str]) -> str:
    """Queue a query tick (behind every captured row and pending bootstrap); returns its run id.

    The tick names the instruments the command selected (a market is cut here, in SQL, under the
    database's collation: `shared.instruments`); only a cut too large for one message travels as
    limit/offset, which the worker's registry applies in the same database order."""
    run_id = f"query-{uuid.uuid4().hex[:12]}"
    fits = len(json.dumps(ids)) <= MAX_MESSAGE_BYTES // 2
    chosen = {"ids": list(ids)} if selection.instrument_ids or fits else {
        "limit": selection.limit, "offset": selection.offset}
    with conn.transaction():
        queue_bootstrap(conn, chunk=settings.bootstrap_chunk_instruments)
        conn.execute("INSERT INTO embedder_runs (run_id) VALUES (%s)", (run_id,))
        conn.execute(
            """INSERT INTO prices_outbox (kind, trade_date, more_dates, window_days, model_ids, market_id, query_run,
                                          selection)
               VALUES ('tick', %s, %s, %s, %s, %s, %s, %s)""",
            (max(dates), sorted(dates)[:-1] or None, selection.window_days, selection.model_ids,
             selection.market_id, run_id, Jsonb(chosen)))
    return run_id


def run_live_query(settings: Settings, selection: RunSelection, ids: list[str], dates: list[date],
                   hooks: ReplayHooks | None = None, timeout: float | None = None) -> StreamResult:
    """Queue the query and wait until the worker's sink has committed every partition's part of it."""
    hooks = hooks or ReplayHooks()
    with connection(settings.database_url) as conn:
        run_id = enqueue_query(conn, settings, selection, dates, ids)
    result = StreamResult(run_id, len(ids), len(dates), answered_live=True)
    if hooks.on_start:
        hooks.on_start(len(ids), len(dates), len(dates) * settings.partitions)
    result.embeddings = wait_for_run(settings.database_url, run_id, max(dates), settings.partitions, hooks, timeout,
                                     poll=0.01, expected_ticks=len(dates) * settings.partitions)
    with connection(settings.database_url) as conn:
        conn.execute("UPDATE embedder_runs SET completed_at = now() WHERE run_id = %s", (run_id,))
    return result
