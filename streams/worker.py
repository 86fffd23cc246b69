"""`embedder worker`: the always-on Faust worker (also started by a replay when none is running)."""
from __future__ import annotations

from pathlib import Path

import faust

from shared.config import Settings
from shared.topics import ensure_topics
from streams.app import create_app


def run_worker(settings: Settings, datadir: Path, loglevel: str = "warn") -> None:
    """Create the topics, then run the worker until SIGTERM/SIGINT (graceful stop)."""
    ensure_topics(settings)
    datadir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, datadir)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
