"""A worker restarts itself when the live layout changes (`embedder live repartition`): it keeps no state
of another partitioning, so it stops gracefully and starts again on the new layout, as the same process.

Polled from the database every `LAYOUT_WATCH_SECONDS`; a database that does not answer is not a change
(the worker's other parts say so)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import psycopg

from shared.contract.config import Settings
from shared.store.live_layout import LiveLayout, read_layout

log = logging.getLogger("embedder.layout")
LAYOUT_WATCH_SECONDS = 5.0


class LayoutWatch:
    """Sees a new layout generation, then asks the worker to stop (SIGTERM to itself: the graceful stop)
    with `restart` set, so `run_worker` starts the process again once the stop is done."""

    def __init__(self, settings: Settings, interval: float = LAYOUT_WATCH_SECONDS):
        self.settings = settings
        self.interval = interval
        self.stop = threading.Event()
        self.restart = threading.Event()
        self.thread = threading.Thread(target=self.run, name="layout-watch", daemon=True)

    def start(self) -> LayoutWatch:
        self.thread.start()
        return self

    def changed(self) -> LiveLayout | None:
        """The recorded layout when it is not this worker's generation."""
        try:
            with psycopg.connect(self.settings.database_url, autocommit=True, connect_timeout=10) as conn:
                layout = read_layout(conn, self.settings.app_id)
        except psycopg.Error:
            return None
        return layout if layout is not None and layout.generation != self.settings.live_generation else None

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            layout = self.changed()
            if layout is None:
                continue
            log.warning(
                "the live service moved to %d partitions (layout generation %d, this worker runs %d): "
                "stopping gracefully to start again on it",
                layout.partitions,
                layout.generation,
                self.settings.live_generation,
            )
            self.restart.set()
            os.kill(os.getpid(), signal.SIGTERM)
            return

    def close(self) -> None:
        self.stop.set()


def restart_process() -> None:
    """Replace this process with the same command (`embedder worker …`), which reads the layout again."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, "-m", "embedder.cli", *sys.argv[1:]])
