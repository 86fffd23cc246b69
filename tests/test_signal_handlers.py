"""A signal handler that stops a command or the correction process never deadlocks.

Python runs a handler on the main thread between two bytecodes, possibly while that thread holds the
lock the handler needs (inside `Event.wait`, or inside an earlier handler's `Event.set` when a second
SIGTERM lands there): a correction process was found blocked so for good, outliving its worker. The
tests below run the handler exactly there, holding the event's condition lock, in a thread watched
with a timeout (a handler calling `event.set()` itself hangs here for good)."""

from __future__ import annotations

import signal
import threading

from embedder.stopping import Stop
from shared.signals import set_from_handler, stop_on_signals


def returns_while_holding_the_lock(event: threading.Event, handler) -> bool:
    """Run `handler()` while holding `event`'s condition lock, as the main thread may when a signal lands."""
    done = threading.Event()

    def body() -> None:
        with event._cond:  # what Event.wait and Event.set hold
            handler()
        done.set()

    threading.Thread(target=body, daemon=True).start()
    return done.wait(5)


def test_set_from_handler_returns_while_the_lock_is_held_and_sets_the_event_after():
    event = threading.Event()
    assert returns_while_holding_the_lock(event, lambda: set_from_handler(event))
    assert event.wait(5)


def test_a_second_and_third_signal_land_inside_the_first_ones_set():
    event = threading.Event()

    def nested() -> None:  # three SIGTERMs in a row, each landing inside the one before
        set_from_handler(event)
        set_from_handler(event)
        set_from_handler(event)

    assert returns_while_holding_the_lock(event, nested)
    assert event.wait(5)


def test_the_commands_stop_handler_returns_while_the_lock_is_held(monkeypatch):
    installed: dict = {}
    monkeypatch.setattr(signal, "signal", lambda sig, handler: installed.setdefault(sig, handler))
    stop = Stop()
    assert set(installed) == {signal.SIGINT, signal.SIGTERM}
    assert returns_while_holding_the_lock(stop.event, lambda: installed[signal.SIGTERM](signal.SIGTERM, None))
    assert stop.wait(5) and stop.signal == signal.SIGTERM


def test_the_correction_process_handler_returns_while_the_lock_is_held(monkeypatch):
    installed: dict = {}
    monkeypatch.setattr(signal, "signal", lambda sig, handler: installed.setdefault(sig, handler))
    stop = threading.Event()
    stop_on_signals(stop)
    assert set(installed) == {signal.SIGINT, signal.SIGTERM}
    assert returns_while_holding_the_lock(stop, lambda: installed[signal.SIGTERM](signal.SIGTERM, None))
    assert stop.wait(5)
