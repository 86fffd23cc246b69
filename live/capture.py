"""The capture switch: the triggers write the outbox only while the live service is enabled.

A platform that only runs the batch path must not pay for capture nor keep a second copy of its
prices (migration 0010). A worker relaying the outbox turns capture on and keeps `relay_seen_at`
fresh; `embedder live capture --off` turns it off, and it stops by itself after `idle_hours` without
a relay (the triggers judge that from the same row, `embedder_capturing()`).

Whatever happened while capture was off is not in the outbox, so turning it on after such a gap
resyncs from `prices_daily`, the record: after a barrier that waits for every write that may have
skipped capture, the live windows are loaded again (their snapshots also delete what the windows may
hold that is gone) and every maintained key is queued for the correction path, which rewrites what
differs. Nothing that happened meanwhile is silently missed; on a database that never changed, the
recheck writes nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

import psycopg

from live.bootstrap import BOOTSTRAP_LOCK, forget_loaded_instruments, move_ticks_behind, queue_bootstrap
from shared.store.db import one
from shared.store.maintained_keys import queue_every_maintained_key

log = logging.getLogger("embedder.capture")


@dataclass(frozen=True)
class CaptureState:
    enabled: bool
    capturing: bool
    """Enabled and not lapsed: what the triggers decide now."""
    idle_hours: float | None
    relay_seen_at: datetime | None
    changed_at: datetime
    changed_by: str | None

    @property
    def describe(self) -> str:
        if self.capturing:
            return "on"
        if self.enabled:
            seen = f"{self.relay_seen_at:%Y-%m-%d %H:%M:%S %Z}" if self.relay_seen_at else "ever"
            return f"lapsed (no relay since {seen}, limit {self.idle_hours:g} h)"
        return "off"


@dataclass(frozen=True)
class Resync:
    """What turning capture on after a gap queued."""

    instruments: int
    keys: int


def capture_state(conn: psycopg.Connection) -> CaptureState:
    row = conn.execute(
        """SELECT enabled, embedder_capturing(), idle_hours, relay_seen_at, changed_at, changed_by
           FROM embedder_capture"""
    ).fetchone()
    if row is None:  # a database migrated by hand without the seed row: the triggers read it as off
        return CaptureState(False, False, None, None, datetime.now().astimezone(), None)
    return CaptureState(*row)


def start_capture(conn: psycopg.Connection, idle_hours: float | None, by: str) -> Resync | None:
    """Turn capture on (and keep it on: the relay's heartbeat). After a gap — never on, turned off, or
    lapsed — resync from prices_daily; returns what was queued then, else None. `conn` is autocommit."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (BOOTSTRAP_LOCK,))
        conn.execute("INSERT INTO embedder_capture (enabled) VALUES (false) ON CONFLICT DO NOTHING")
        was_capturing = one(conn.execute("SELECT embedder_capturing() FROM embedder_capture FOR UPDATE"))[0]
        conn.execute(
            """UPDATE embedder_capture SET relay_seen_at = clock_timestamp(), idle_hours = %s,
                      enabled = true, changed_at = CASE WHEN enabled THEN changed_at ELSE clock_timestamp() END,
                      changed_by = CASE WHEN enabled THEN changed_by ELSE %s END""",
            (idle_hours, by),
        )
    if was_capturing:
        return None
    wait_for_uncaptured_writes(conn)
    return resync(conn)


def wait_for_uncaptured_writes(conn: psycopg.Connection, lock_timeout_s: float = 5.0) -> None:
    """Writes whose statements found capture off may still be in flight: wait until they ended, so
    that the resync reads every change that was not captured. A SHARE lock waits for every writer in
    flight (new writers wait at most `lock_timeout_s` per attempt); where the role may not take it,
    wait for the transactions that held an id when capture turned on."""
    while True:
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
                conn.execute("LOCK TABLE prices_daily IN SHARE MODE")
            return
        except psycopg.errors.LockNotAvailable:
            log.warning("capture: a long write holds prices_daily; waiting for it before the resync")
        except psycopg.errors.InsufficientPrivilege:
            break
    in_flight = conn.execute("SELECT txid_snapshot_xip(txid_current_snapshot())::text").fetchall()
    for (xid,) in in_flight:
        while one(conn.execute("SELECT txid_status(%s::bigint) = 'in progress'", (int(xid),)))[0]:
            time.sleep(0.5)


def heartbeat(conn: psycopg.Connection, idle_hours: float | None, by: str) -> Resync | None:
    """The relay is alive: keep capture on. Where it lapsed meanwhile (a relay stalled longer than the
    limit), this is a restart after a gap, with its resync."""
    alive = conn.execute(
        """UPDATE embedder_capture SET relay_seen_at = clock_timestamp()
           WHERE embedder_capturing() RETURNING 1"""
    ).fetchone()
    return None if alive else start_capture(conn, idle_hours, by)


def stop_capture(conn: psycopg.Connection, by: str) -> bool:
    """Turn capture off; returns whether it was on. Entries already captured are still relayed."""
    row = conn.execute(
        """UPDATE embedder_capture SET enabled = false, changed_at = clock_timestamp(), changed_by = %s
           WHERE enabled RETURNING 1""",
        (by,),
    ).fetchone()
    return row is not None


def resync(conn: psycopg.Connection) -> Resync:
    """Bring the live windows and every maintained key back to prices_daily after capture was off: what
    the windows loaded is loaded again (snapshots queued now read prices_daily after the gap), ticks
    still waiting in the outbox move behind those snapshots, and every maintained key is queued for the
    correction path."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (BOOTSTRAP_LOCK,))
        loaded = forget_loaded_instruments(conn)
        instruments = queue_bootstrap(conn, resync=loaded)
        move_ticks_behind(conn)
        keys = queue_every_maintained_key(conn)
    log.warning(
        "capture is on again after a gap: the live windows are rebuilt from prices_daily (%d instrument(s)) "
        "and %d maintained key(s) are rechecked by the correction path",
        instruments,
        keys,
    )
    return Resync(instruments, keys)
