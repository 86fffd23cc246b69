"""Answering a replay with a query tick to the live worker instead of republishing its look-back.

The usual call of the platform's command is one recent as_of (the latest day, a
month end). The live run's windows hold every ACTIVE EQUITY instrument's rows
back to 3 x window + slack days before its newest row, so such a request needs
no look-back republished: a *query tick* is queued in the outbox (behind every
captured row, so it sees all committed data), the worker computes the selection
from the live state and records the output under the query's own run id, and the
command waits for those completions as it would for a replay.

The windows answer when every selected instrument is one the live run loads
(ACTIVE EQUITY), the window is the live one, and the look-back of the earliest
date lies inside what the windows keep. Otherwise (a historical as_of, another
window) the query tick asks each partition to read its instruments' look-back from
prices_daily with the batch path's reader (`streams/lookback.py`): a few queries
instead of tens of thousands of rows through Kafka. Either needs a worker relaying
the live run (someone holds the relay lock; one that reads look-backs for the
second), and the selected ids must fit in the tick for the second. Otherwise the
replay publishes its rows into a run of its own, as before.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import date

import psycopg

from backfill.selection import RunSelection
from live.bootstrap import queue_bootstrap
from live.relay import relay_holder
from shared.contract.config import Settings
from shared.contract.encoder import LOOKBACK_FACTOR, retention_days
from shared.contract.messages import MAX_MESSAGE_BYTES
from shared.contract.validation import latest_trade_date
from shared.store.db import connection, one
from shared.store.instruments import SELECTABLE, newest_trade_date_sql
from shared.store.maintained_keys import queue_changes_since
from shared.store.outbox import insert_tick, outbox_position, wake_relay
from shared.store.tick_commits import ReplayHooks, StreamResult, complete_run, start_run, wait_for_run

MAX_QUERY_DATES = 400


@dataclass(frozen=True)
class LiveAnswer:
    """Whether the live worker can answer a selection with a query tick, and how: from its windows, or
    (`from_database`) from the look-back each partition reads from prices_daily; `reason` says why not
    from the windows."""

    ok: bool
    reason: str = ""
    from_database: bool = False


def live_can_answer(
    conn: psycopg.Connection, settings: Settings, selection: RunSelection, ids: list[str], dates: list[date]
) -> LiveAnswer:
    """Can the live worker give the selection's embeddings at `dates`, exactly as a replay would?"""
    if not ids or not dates:
        return LiveAnswer(False, "nothing selected")
    if len(dates) > MAX_QUERY_DATES:
        return LiveAnswer(False, f"more than {MAX_QUERY_DATES} as_of dates")
    ids_fit = len(json.dumps(ids)) <= MAX_MESSAGE_BYTES // 2
    if selection.instrument_ids and not ids_fit:
        return LiveAnswer(False, "too many instrument ids for one query")
    holder = relay_holder(conn)
    if holder is None:
        return LiveAnswer(False, "no worker relays the live run")
    why = windows_miss(conn, settings, selection, ids, dates)
    if not why:
        return LiveAnswer(True)
    if holder.protocol >= 2 and ids_fit:
        return LiveAnswer(True, why, from_database=True)
    return LiveAnswer(False, why)


def windows_miss(
    conn: psycopg.Connection, settings: Settings, selection: RunSelection, ids: list[str], dates: list[date]
) -> str:
    """Why the live windows cannot answer the selection ("" when they can)."""
    if selection.window_days != settings.window_days:
        return f"the live windows are for window_days {settings.window_days}"
    selectable, newest = one(
        conn.execute(
            f"""SELECT count(*) FILTER (WHERE {SELECTABLE}), max({newest_trade_date_sql("i", "%s")})
            FROM instruments i WHERE i.instrument_id = ANY(%s)""",
            (latest_trade_date(), ids),
        )
    )
    if selectable < len(ids):
        return "some selected instruments are not ACTIVE EQUITY (the live run does not load them)"
    keep = retention_days(settings.window_days, settings.retention_slack_days)
    if newest is not None and (min(dates) - newest).days + keep < LOOKBACK_FACTOR * selection.window_days:
        return f"{min(dates)} is older than the live windows keep"
    return ""


def enqueue_query(
    conn: psycopg.Connection,
    settings: Settings,
    selection: RunSelection,
    dates: list[date],
    ids: list[str],
    from_database: bool = False,
) -> str:
    """Queue a query tick (behind every captured row and pending bootstrap); returns its run id.

    The tick names the instruments the command selected (a market is cut here, in SQL, under the
    database's collation: `shared.store.instruments`); only a cut too large for one message travels as
    limit/offset, which the worker's registry applies in the same database order (never for a query
    `from_database`: `live_can_answer` asks it only when the ids fit)."""
    run_id = f"query-{uuid.uuid4().hex[:12]}"
    fits = len(json.dumps(ids)) <= MAX_MESSAGE_BYTES // 2
    chosen: dict = (
        {"ids": list(ids)}
        if selection.instrument_ids or fits
        else {"limit": selection.limit, "offset": selection.offset}
    )
    if from_database:
        chosen["lookback"] = "database"
    with conn.transaction():
        queue_bootstrap(conn, chunk=settings.bootstrap_chunk_instruments)
        start_run(conn, run_id)
        wake_relay(conn)
        insert_tick(
            conn,
            max(dates),
            selection.window_days,
            selection.model_ids,
            selection.market_id,
            more_dates=sorted(dates)[:-1] or None,
            query_run=run_id,
            selection=chosen,
        )
    return run_id


def run_live_query(
    settings: Settings,
    selection: RunSelection,
    ids: list[str],
    dates: list[date],
    hooks: ReplayHooks | None = None,
    timeout: float | None = None,
    from_database: bool = False,
) -> StreamResult:
    """Queue the query and wait until the worker's sink has committed every partition's part of it.

    A query `from_database` reads prices_daily when the worker gets to it: changes captured after it
    was queued are queued for the correction path at the end (as a replay does), so nothing it wrote
    from rows read before such a change stays stale."""
    hooks = hooks or ReplayHooks()
    with connection(settings.database_url) as conn:
        position = outbox_position(conn)
        run_id = enqueue_query(conn, settings, selection, dates, ids, from_database)
    result = StreamResult(
        run_id, len(ids), len(dates), answered_live=not from_database, answered_from_database=from_database
    )
    if hooks.on_start:
        hooks.on_start(len(ids), len(dates), len(dates) * settings.partitions)
    result.embeddings = wait_for_run(
        settings.database_url,
        run_id,
        max(dates),
        settings.partitions,
        hooks,
        timeout,
        poll=0.01,
        expected_ticks=len(dates) * settings.partitions,
    )
    with connection(settings.database_url) as conn:
        complete_run(conn, run_id)
        if from_database:
            queue_changes_since(conn, position, ids)
    return result
