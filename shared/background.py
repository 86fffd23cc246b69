"""Threads beside the worker's stream (the capture relay, the correction path, the parity audit)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def start_when_ready(
    name: str, run: Callable[[], None], stop: threading.Event, ready: threading.Event | None = None
) -> threading.Thread:
    """Run `run` in a daemon thread once `ready` is set (the worker recovered its tables), unless `stop`
    is set first; returns the started thread."""

    def body() -> None:
        while ready is not None and not ready.wait(0.5):
            if stop.is_set():
                return
        run()

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    return thread
