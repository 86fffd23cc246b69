"""Long-running commands stop within 2 s of SIGINT or SIGTERM, whatever Kafka or PostgreSQL are doing.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread is; kafka-python 3 catches
`BaseException` in its network code, so a Ctrl-C that lands there is swallowed and the command runs on
(seen in CI under load: `lag --serve` still sampling 1 h 44 min after its SIGINT). So the commands here
never do their work on the main thread: the work runs in a daemon thread, SIGINT and SIGTERM only set an
event the main thread waits on, and then the command says goodbye, gives its cleanup a bounded time and
leaves with `os._exit` — a broker that is paused, a coordinator that is slow, a request in flight cannot
hold the process (a second signal leaves at once).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from shared.signals import set_from_handler

STOP_CODE = 130
"""Exit code after SIGINT/SIGTERM (128 + SIGINT, as shells report an interrupted command)."""


class Stop:
    """SIGINT and SIGTERM set `event` (installed on construction, in the main thread)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:  # asked twice: leave now
            os._exit(STOP_CODE)
        self.signal = signum
        set_from_handler(self.event)  # never `event.set()` here: the main thread may hold its lock

    def wait(self, seconds: float | None = None) -> bool:
        """Sleep up to `seconds` (forever: None); True when a stop was asked."""
        return self.event.wait(seconds)


def run_until_stopped(
    work: Callable[[Stop], int | None],
    cleanup: Callable[[], object] | None = None,
    grace: float = 1.0,
    stopped_code: int = STOP_CODE,
    message: str | None = None,
) -> int:
    """Run `work(stop)` in a daemon thread until it returns (its code) or a signal comes (`stopped_code`: 0
    where stopping is the normal end, as for `lag --watch`), after at most `grace` seconds of `cleanup`; the
    process leaves even if `work` is still inside a library call. `work` should look at `stop` between its
    steps (`stop.wait(interval)` instead of sleeping). `message`: one line for stderr when a signal stops it."""
    stop = Stop()
    result: list[int | None] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            result.append(work(stop))
        except BaseException as e:  # re-raised on the main thread
            failure.append(e)
        finally:
            stop.event.set()

    thread = threading.Thread(target=body, name="command", daemon=True)
    thread.start()
    stop.wait()
    if stop.signal is None:  # the work finished by itself
        thread.join()
        if failure:
            raise failure[0]
        return int(result[0] or 0) if result else 0
    if message:
        try:
            sys.stderr.write(message + "\n")
        except (OSError, ValueError):
            pass
    leave(stopped_code, cleanup, grace)
    return stopped_code  # not reached


def leave(code: int, cleanup: Callable[[], object] | None = None, grace: float = 1.0) -> None:
    """Exit now with `code`: `cleanup` gets at most `grace` seconds (in a thread), the output is flushed."""
    if cleanup is not None:
        done = threading.Thread(target=cleanup, name="cleanup", daemon=True)
        done.start()
        done.join(grace)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
