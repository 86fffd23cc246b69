"""The always-on service composed: the stream worker, and beside it the capture relay (with its tick
schedule), the correction path (a child process) and the parity audit, each started once the worker is ready and stopped
with it. `embedder worker` runs `run_service`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import psycopg

from live.bootstrap import fallen_short, reconcile_state_format, reload_windows, requeue_lost
from live.correction_process import start_correction_process
from live.parity_audit import start_parity_audit
from live.relay import start_relay
from live.schedule import TickScheduler
from shared.broker.topics import STATE_FORMAT
from shared.contract.config import Settings
from shared.metrics import StreamMetrics
from shared.store.db import PatientReader, connection
from shared.store.live_layout import resolve
from streams.processor import ShortWindows
from streams.worker import run_worker


def beside_stream(
    settings: Settings, capture: bool, loglevel: str = "warn"
) -> Callable[[threading.Event, StreamMetrics], Callable[[], None]]:
    """What runs beside the stream: the capture relay (with `capture`), the correction path (in a process of
    its own), the audit."""

    def reload(ids: list[str]) -> None:
        """The audit found these instruments' keys wrong: their live windows are loaded again too."""
        with connection(settings.database_url) as conn:
            reload_windows(conn, ids)

    def start(ready: threading.Event, metrics: StreamMetrics) -> Callable[[], None]:
        audit, audit_thread = start_parity_audit(settings, ready, metrics, reload if capture else None)
        corrections, corrections_thread = start_correction_process(settings, ready, metrics, audit.corrected, loglevel)
        parts = [(audit.stop, audit_thread), (corrections.stop, corrections_thread)]
        if capture:
            relay, thread = start_relay(settings, ready, metrics, idle_tasks=[TickScheduler(settings, metrics=metrics)])
            parts.append((relay.stop, thread))

        def stop() -> None:
            for flag, _ in parts:
                flag.set()
            for _, thread in parts:
                if thread.is_alive():
                    thread.join(timeout=10)

        return stop

    return start


def run_service(
    settings: Settings, data_dir: Path | None, loglevel: str, capture: bool, companions: bool = True
) -> None:
    """Run the always-on service until SIGTERM/SIGINT, on the layout and state format the database records.
    Without `companions` (a worker a replay starts for its run, `embedder worker --for-run`), the stream and its
    sink run alone: the correction path and the parity audit are the always-on service's (they were ~0.45 CPU-s of
    every one-shot replay, the correction process's start; what a run queues for correction, as `replay --direct`
    does, waits in `embedder_recompute_queue` for the service, shown by `embedder status`)."""
    settings = resolve(settings)  # the partitions and generation the database records
    with connection(settings.database_url) as conn:
        reconcile_state_format(conn, settings.app_id, STATE_FORMAT, settings.live_generation)

    bootstrap = PatientReader(settings.database_url, "queueing lost windows for loading")

    def lost_windows(ids: list[str], short: ShortWindows | None) -> None:
        # retried while PostgreSQL is away: the tick that found them is acked, so nothing would ask again until
        # the next tick, and an exception here would crash the agent
        def requeue(conn: psycopg.Connection) -> int:
            lost = ids + (fallen_short(conn, short.since, short.until, short.held) if short else [])
            return requeue_lost(conn, lost) if lost else 0

        bootstrap.read(requeue)

    run_worker(
        settings,
        data_dir or settings.state_dir / "worker",
        loglevel,
        beside=beside_stream(settings, capture, loglevel) if companions else None,
        on_lost_windows=lost_windows if capture else None,
    )
