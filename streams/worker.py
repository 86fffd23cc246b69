"""`embedder worker`: the always-on Faust worker (also started by a replay when none is running)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import faust

from shared.config import Settings
from shared.topics import ensure_topics
from streams.app import create_app


def run_worker(settings: Settings, datadir: Path, loglevel: str = "warn",
               beside: Callable[[], Callable[[], None]] | None = None) -> None:
    """Create the topics, then run the worker until SIGTERM/SIGINT (graceful stop).

    `beside` starts a companion (the live-capture relay) and returns its stop function.
    """
    ensure_topics(settings)
    datadir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, datadir)
    stop_companion = beside() if beside else None
    try:
        faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
    finally:
        if stop_companion:
            stop_companion()
