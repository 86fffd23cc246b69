"""Signal handlers that cannot deadlock, and a child process that ends with its parent.

A Python signal handler runs on the main thread between two bytecodes, possibly while that thread holds
the very lock the handler would take: `threading.Event.set` takes the event's condition lock, which the
main thread holds inside `Event.wait` and inside an earlier handler's own `set` (a second SIGTERM landing
there). Seen in a test run: a correction process, sent SIGTERM twice as its worker died, blocked for good
in its second handler's `Event.set` (py-spy), and outlived its worker. So a handler only flips a plain
attribute and leaves the `set` to a new thread, which waits for the lock like any other thread.
"""

from __future__ import annotations

import signal
import threading


def set_from_handler(event: threading.Event) -> None:
    """`event.set()`, safe to call from a signal handler (any number of times)."""
    if not event.is_set():  # reads a plain attribute: takes no lock
        threading.Thread(target=event.set, name="signal", daemon=True).start()


def stop_on_signals(event: threading.Event) -> None:
    """SIGTERM and SIGINT set `event` (call on the main thread)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: set_from_handler(event))


def stop_with_parent() -> None:
    """In the child, before it runs: SIGTERM it when the thread that started it ends (the command stopped by
    a signal, or killed): a run's worker never outlives the command that started it. Linux only."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
