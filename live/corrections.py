"""The database path for corrections: every captured price change reaches every stored embedding.

The stream recomputes what its live windows remember; history older than they keep, rows written by
other paths (replays, `replay --direct`, the platform command, a previous release) and state lost with
a state folder or changelogs are the database's to maintain. The relay queues each captured change
that reaches a maintained key (`shared.store.maintained_keys`) in `embedder_recompute_queue`; this loop takes
the queue in order, a few instruments per transaction, recomputes the keys each change reaches from
`prices_daily` (`backfill.recompute`), writes what differs and deletes the queue entries it took, all
in one transaction: a kill -9 leaves them queued, and doing one twice changes nothing. Memory is
bounded by one transaction's instruments. One worker per database drains (an advisory lock); it runs
in a process of its own beside the worker (`live.correction_process`), so live ticks never wait for it,
not even for the interpreter's lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import psycopg

from backfill.recompute import Rewritten, rewrite_keys
from shared.contract.config import Settings
from shared.contract.errors import EmbedderError
from shared.metrics import StreamMetrics
from shared.store.db import connect, one
from shared.store.embedding_store import price_changes, set_cause
from shared.store.maintained_keys import (
    MaintainedKey,
    affected_keys,
    dequeue,
    oldest_queued_instruments,
    queue_depth,
    queued_changes_of,
)

log = logging.getLogger("embedder.corrections")
RECOMPUTE_LOCK = 727_003  # pg advisory lock key: one correction loop per database
MAX_CHANGES = 2_000
"""Oldest queued changes looked at to choose the instruments of a transaction."""
MAX_INSTRUMENTS = 10
GAUGE_EVERY_SECONDS = 5.0


@dataclass
class Drained:
    """One transaction of the correction loop."""

    changes: int = 0
    instruments: int = 0
    rewritten: Rewritten = field(default_factory=Rewritten)
    keys: list[MaintainedKey] = field(default_factory=list)


def drain_once(
    conn: psycopg.Connection, max_changes: int = MAX_CHANGES, max_instruments: int = MAX_INSTRUMENTS
) -> Drained:
    """Recompute every queued change of the (at most `max_instruments`) instruments with the oldest
    queued changes, in one transaction: an instrument's keys are recomputed once for all its changes."""
    out = Drained()
    with conn.transaction():
        taken = oldest_queued_instruments(conn, max_changes, max_instruments)
        if not taken:
            return out
        items = queued_changes_of(conn, taken)
        changes: list[tuple[str, date]] = [(i, d) for i, d, _ in items]
        set_cause(conn, "correction", price_changes(changes))
        out.keys = affected_keys(conn, changes)
        out.rewritten = rewrite_keys(conn, out.keys)
        dequeue(conn, items)
        out.changes, out.instruments = len(items), len(taken)
    return out


KeysCallback = Callable[[list[MaintainedKey]], None]


@dataclass(frozen=True)
class Step:
    """What one transaction of the loop did: what the worker's metrics, log and parity audit are told (the
    loop runs in a process of its own, `live.correction_process`, which sends these to the worker)."""

    changes: int
    instruments: int
    keys: int
    changed: int
    removed: int
    unchanged: int
    refused: int
    seconds: float
    rewritten: tuple[MaintainedKey, ...] = ()

    @classmethod
    def of(cls, done: Drained, seconds: float) -> Step:
        r = done.rewritten
        return cls(
            done.changes,
            done.instruments,
            r.keys,
            r.changed,
            r.removed,
            max(r.unchanged, 0),
            r.refused,
            seconds,
            tuple(done.keys),
        )


def into_metrics(metrics: StreamMetrics | None, on_rewritten: KeysCallback | None) -> Callable[[Step], None]:
    """Apply each step to the worker's metrics and hand its keys to the audit."""

    def apply(step: Step) -> None:
        if metrics is not None:
            metrics.recompute_changes.inc(step.changes)
            metrics.recompute_keys.labels("changed").inc(step.changed)
            metrics.recompute_keys.labels("removed").inc(step.removed)
            metrics.recompute_keys.labels("unchanged").inc(step.unchanged)
            if step.refused:
                metrics.writes_refused.labels("correction").inc(step.refused)
            metrics.recompute_seconds.observe(step.seconds)
        if on_rewritten is not None and step.rewritten:
            on_rewritten(list(step.rewritten))

    return apply


@dataclass
class CorrectionLoop:
    """Drains the recompute queue until `stop` is set; reconnects after database errors. Each transaction is
    reported to `report`, the queue's depth (every few seconds) to `gauge`."""

    settings: Settings
    report: Callable[[Step], None] | None = None
    gauge: Callable[[int], None] | None = None
    poll_seconds: float = 0.5
    stop: threading.Event = field(default_factory=threading.Event)
    _gauged_at: float = 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with connect(self.settings.database_url, autocommit=True) as conn:
                    if not one(conn.execute("SELECT pg_try_advisory_lock(%s)", (RECOMPUTE_LOCK,)))[0]:
                        self.stop.wait(2.0)  # another worker drains; stand by
                        continue
                    while not self.stop.is_set():
                        if not self.step(conn):
                            self.stop.wait(self.poll_seconds)
            except (psycopg.Error, EmbedderError) as e:
                log.warning("correction loop: %s; retrying in 2s", str(e).splitlines()[0])
                self.stop.wait(2.0)

    def step(self, conn: psycopg.Connection) -> bool:
        """One transaction; False when the queue was empty."""
        started = time.monotonic()
        done = drain_once(conn, max_instruments=self.settings.correction_batch_instruments)
        if done.changes == 0:
            self._gauge(conn)
            return False
        step = Step.of(done, time.monotonic() - started)
        log.info(
            "corrections: %d change(s) of %d instrument(s) reached %d stored key(s): %d changed, %d removed, "
            "%d refused (newer stored) (%.2fs)",
            step.changes,
            step.instruments,
            step.keys,
            step.changed,
            step.removed,
            step.refused,
            step.seconds,
        )
        if self.report is not None:
            self.report(step)
        self._gauge(conn)
        return True

    def _gauge(self, conn: psycopg.Connection) -> None:
        if self.gauge is None or time.monotonic() - self._gauged_at < GAUGE_EVERY_SECONDS:
            return
        self._gauged_at = time.monotonic()
        self.gauge(queue_depth(conn))
