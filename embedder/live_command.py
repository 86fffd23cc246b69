"""`embedder live bootstrap` and `embedder live capture`: the live windows' history, the capture switch."""

from __future__ import annotations

import time

from embedder.console import err, out, progress
from live.bootstrap import progress as bootstrap_progress
from live.bootstrap import queue_bootstrap, reset_bootstrap
from live.capture import capture_state, start_capture, stop_capture
from live.relay import relay_holder
from shared.contract.config import Settings
from shared.contract.errors import EmbedderError
from shared.store.db import connection
from shared.store.outbox import outbox_backlog

NO_RELAY_PATIENCE = 15.0


def run_bootstrap(settings: Settings, market_id: str | None, reset: bool, wait: bool) -> None:
    """Queue what is not loaded (all of it again with `reset`), then, with `wait`, show the relay
    loading it until done. Fails when no worker relays the outbox for a while."""
    with connection(settings.database_url) as conn:
        if reset:
            forgotten = reset_bootstrap(conn, market_id)
            out.print(f"forgot {forgotten} loaded instrument(s); loading them again", highlight=False)
        queued = queue_bootstrap(conn, market_id, settings.bootstrap_chunk_instruments)
    scope = f" of market {market_id}" if market_id else ""
    with connection(settings.database_url, autocommit=True) as conn:
        state = bootstrap_progress(conn, market_id)
        out.print(
            f"queued {queued} instrument(s){scope}; {state.published} of {state.queued} loaded "
            f"({state.rows:,} rows), {state.pending} waiting for the relay",
            highlight=False,
        )
        if not wait or not state.pending:
            return
        bar = progress()
        task = bar.add_task("bootstrap", total=state.queued, completed=state.published, detail="")
        no_relay_since: float | None = None
        with bar:
            while state.pending:
                time.sleep(0.5)
                state = bootstrap_progress(conn, market_id)
                bar.update(task, completed=state.published, detail=f"{state.rows:,} rows")
                if relay_holder(conn) is None:
                    no_relay_since = no_relay_since or time.monotonic()
                    if time.monotonic() - no_relay_since > NO_RELAY_PATIENCE:
                        raise EmbedderError(
                            f"no worker relays prices_outbox ({state.pending} instrument(s) still "
                            "queued): start `embedder worker`; it loads them when it starts"
                        )
                else:
                    no_relay_since = None
        err.print(f"loaded: {state.published} instrument(s), {state.rows:,} rows", highlight=False)


def run_capture(settings: Settings, on: bool | None) -> None:
    """Switch capture (with `on`), then show its state and the outbox's backlog."""
    by = "embedder live capture"
    with connection(settings.database_url, autocommit=True) as conn:
        if on is True:
            resynced = start_capture(conn, settings.capture_idle_limit, by)
            if resynced is not None:
                out.print(
                    f"capture on after a gap: {resynced.instruments} instrument(s) queued for the live windows, "
                    f"{resynced.keys:,} maintained key(s) queued for a recheck",
                    highlight=False,
                )
        elif on is False:
            was = stop_capture(conn, by)
            out.print(
                "capture off" + ("" if was else " (it was off)") + "; entries already captured are still relayed",
                highlight=False,
            )
        state = capture_state(conn)
        backlog = outbox_backlog(conn)
        holder = relay_holder(conn)
    out.print(
        f"capture: {state.describe} (since {state.changed_at:%Y-%m-%d %H:%M:%S %Z}"
        + (f", by {state.changed_by}" if state.changed_by else "")
        + ")",
        highlight=False,
    )
    out.print(
        f"outbox: {backlog.entries} unpublished entr{'y' if backlog.entries == 1 else 'ies'} "
        f"({backlog.keys:,} captured keys), {backlog.bytes / 1e6:.1f} MB on disk"
        + (f", oldest waiting {backlog.oldest_seconds:.0f} s" if backlog.entries else ""),
        highlight=False,
    )
    if holder is None and state.capturing:
        err.print(
            "no worker relays the outbox now: start `embedder worker` (capture stops by itself after "
            f"{settings.capture_idle_hours:g} h without one)",
            highlight=False,
        )


def run_repartition(settings: Settings, partitions: int) -> None:
    """`embedder live repartition N` (live/repartition.py), said in a few lines."""
    from live.repartition import repartition

    done = repartition(settings, partitions, "embedder live repartition")
    if done.after == done.before:
        out.print(
            f"the live service already runs {partitions} partitions (layout generation {done.after.generation}, "
            f"prices topic {done.prices_topic}); nothing to do",
            highlight=False,
        )
        return
    out.print(
        f"live layout: {done.before.partitions} -> {done.after.partitions} partitions (generation "
        f"{done.after.generation}), prices topic {done.prices_topic}",
        highlight=False,
    )
    out.print(f"{done.requeued_ticks} live tick(s) not committed on every partition are queued again", highlight=False)
    out.print(
        "running workers restart on it within a few seconds and reload their windows from prices_daily; "
        "ticks wait until then (`embedder status` shows the bootstrap)",
        highlight=False,
    )
