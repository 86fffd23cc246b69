"""What the relaying worker does while the outbox is drained: the bootstrap check, the automatic tick, the
scheduled ticks (idle tasks), pruning, the gauges, and the capture heartbeat — each on a timer of its own
(`Every`), with the relay's connection."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import date

import psycopg

from live.bootstrap import enqueue_tick, pending_instruments, queue_bootstrap
from live.capture import capture_state, heartbeat
from shared.contract.config import Settings
from shared.contract.messages import is_deletion
from shared.metrics import StreamMetrics
from shared.store.embedding_history import CAUSE_KINDS, prune_versions, revisions_today
from shared.store.outbox import outbox_backlog, prune_outbox

log = logging.getLogger("embedder.outbox")

PRUNE_EVERY_SECONDS = 60.0
BOOTSTRAP_CHECK_SECONDS = 30.0
GAUGE_EVERY_SECONDS = 5.0  # the outbox and bootstrap gauges: counted when idle, not on every 0.1 s poll
HEARTBEAT_SECONDS = 30.0

IdleTask = Callable[[psycopg.Connection], object]
"""Run when the outbox is drained (the tick schedule), with the relay's connection."""


class Every:
    """A timer: `due()` is true at most once every `seconds` (at once the first time, or after `now()`)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._at: float | None = None

    def due(self) -> bool:
        now = time.monotonic()
        if self._at is not None and now - self._at < self.seconds:
            return False
        self._at = now
        return True

    def now(self) -> None:
        """Due at once on the next call."""
        self._at = None

    def later(self) -> None:
        """Not due until `seconds` from now."""
        self._at = time.monotonic()


class Housekeeping:
    """The relay's idle work and what it remembers for it (the newest captured day, the last tick)."""

    def __init__(self, settings: Settings, metrics: StreamMetrics | None, by: str, idle_tasks: list[IdleTask]):
        self.settings = settings
        self.metrics = metrics
        self.by = by
        self.idle_tasks = idle_tasks
        self.last_row_date: date | None = None
        self.ticked_through: date | None = None
        self._last_activity = time.monotonic()
        limit = settings.capture_idle_limit
        self._heartbeat = Every(min(HEARTBEAT_SECONDS, limit * 3600 / 4) if limit else HEARTBEAT_SECONDS)
        self._bootstrap = Every(BOOTSTRAP_CHECK_SECONDS)
        self._prune = Every(PRUNE_EVERY_SECONDS)
        self._gauge = Every(GAUGE_EVERY_SECONDS)

    def relaying(self) -> None:
        """This worker took the relay lock (capture was just turned on): check the bootstrap at once."""
        self._heartbeat.later()
        self._bootstrap.now()

    def active(self) -> None:
        """Entries were just published."""
        self._last_activity = time.monotonic()

    def ticked(self, day: date) -> None:
        """A live tick of `day` was published: the automatic tick has nothing to do up to it."""
        self.ticked_through = max(self.ticked_through or day, day)

    def saw_rows(self, rows: Sequence[tuple], latest: date) -> None:
        """The newest plausible trade date of captured rows: what an automatic tick covers."""
        days = [r[1] for r in rows if not is_deletion(r) and r[1] is not None and r[1] <= latest]
        if days:
            self.last_row_date = max(self.last_row_date or days[0], max(days))

    def when_idle(self, conn: psycopg.Connection) -> None:
        """The outbox is drained: housekeeping, the automatic and scheduled ticks."""
        self.maybe_queue_bootstrap(conn)
        self.maybe_auto_tick(conn)
        for task in self.idle_tasks:
            task(conn)
        self.maybe_prune(conn)
        self.gauge(conn)

    def gauge(self, conn: psycopg.Connection) -> None:
        """The outbox, capture and bootstrap gauges, at most every few seconds (standby workers too: a
        backlog that grows while no worker relays is what the alert is for)."""
        if not self.metrics or not self._gauge.due():
            return
        m = self.metrics
        backlog = outbox_backlog(conn)
        m.outbox_backlog.set(backlog.entries)
        m.outbox_keys.set(backlog.keys)
        m.outbox_bytes.set(backlog.bytes)
        m.outbox_oldest_seconds.set(backlog.oldest_seconds)
        m.capture_on.set(1 if capture_state(conn).capturing else 0)
        m.bootstrap_pending.set(pending_instruments(conn))
        revised = revisions_today(conn)
        other = sum(n for cause, n in revised.items() if cause not in CAUSE_KINDS)  # a fixed label set
        for cause in CAUSE_KINDS:
            m.embeddings_revised_today.labels(cause).set(revised.get(cause, 0))
        m.embeddings_revised_today.labels("other").set(other)

    def maybe_heartbeat(self, conn: psycopg.Connection) -> None:
        """Keep capture on while this worker relays (and resync if it lapsed meanwhile)."""
        if self._heartbeat.due():
            heartbeat(conn, self.settings.capture_idle_limit, self.by)

    def maybe_queue_bootstrap(self, conn: psycopg.Connection) -> None:
        """On start and every half minute: queue instruments that became selectable (a new market,
        an instrument set ACTIVE) for loading from prices_daily."""
        if self._bootstrap.due():
            queue_bootstrap(conn, chunk=self.settings.bootstrap_chunk_instruments)

    def maybe_auto_tick(self, conn: psycopg.Connection) -> None:
        """After a quiet period with new rows, tick the newest trade date seen (if enabled)."""
        quiet = self.settings.auto_tick_quiet_seconds
        if quiet <= 0 or self.last_row_date is None:
            return
        if self.ticked_through is not None and self.ticked_through >= self.last_row_date:
            return
        if time.monotonic() - self._last_activity < quiet:
            return
        enqueue_tick(
            conn,
            self.last_row_date,
            self.settings.window_days,
            list(self.settings.live_model_ids),
            chunk=self.settings.bootstrap_chunk_instruments,
        )
        log.info("auto tick for %s after %.0fs without new rows", self.last_row_date, quiet)

    def maybe_prune(self, conn: psycopg.Connection) -> None:
        """At most once a minute, when idle: drop published entries and superseded embeddings past their
        keep times."""
        if not self._prune.due():
            return
        keep = self.settings.outbox_keep_hours
        deleted = prune_outbox(conn, keep) if keep > 0 else 0
        if deleted:
            log.info("outbox: deleted %d published entries older than %.0f h", deleted, keep)
        if self.settings.version_retention_days:
            gone = prune_versions(conn, self.settings.version_retention_days)
            if gone:
                log.info(
                    "history: deleted %d superseded embeddings older than %g days",
                    gone,
                    self.settings.version_retention_days,
                )
