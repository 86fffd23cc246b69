"""Live capture: relay `prices_outbox` to the prices topic in id order, marking rows only after Kafka acks.

The triggers of migration 0004 write every inserted or changed price into the
outbox in the same transaction; `embedder tick` writes ticks there too, so a
tick can never overtake the rows committed before it. One relay is active at a
time (a PostgreSQL advisory lock), so several workers never interleave the
order. If anything dies between the publish and the mark, the rows are
published again: the stream is idempotent, so nothing is lost or doubled.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import date

import psycopg

from backfill.blocks import ROWS_PER_MESSAGE
from backfill.publisher import PricePublisher, partition_for
from shared.config import Settings
from shared.db import connect
from shared.errors import EmbedderError
from shared.messages import LIVE_RUN, RowBatch, Tick

log = logging.getLogger("embedder.outbox")
RELAY_LOCK = 727_001  # pg advisory lock key: one active relay per database
BATCH = 5000
PRUNE_EVERY_SECONDS = 60.0


def enqueue_tick(conn: psycopg.Connection, as_of: date, window_days: int, model_ids: list[str]) -> int:
    """Queue a live tick behind every row already committed to the outbox; returns its outbox id."""
    return conn.execute(
        """INSERT INTO prices_outbox (kind, trade_date, window_days, model_ids)
           VALUES ('tick', %s, %s, %s) RETURNING id""",
        (as_of, window_days, model_ids),
    ).fetchone()[0]


@dataclass
class OutboxRelay:
    """Polls the outbox and publishes it; `run` blocks until `stop` is set."""

    settings: Settings
    poll_seconds: float = 0.5
    stop: threading.Event = field(default_factory=threading.Event)
    published: int = 0
    last_row_date: date | None = None
    _last_activity: float = field(default_factory=time.monotonic)
    _ticked_through: date | None = None
    _pruned_at: float = 0.0

    def run(self) -> None:
        """Hold the relay lock, then relay until stopped; reconnect after database errors."""
        while not self.stop.is_set():
            try:
                with connect(self.settings.database_url, autocommit=True) as conn:
                    if not conn.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,)).fetchone()[0]:
                        self.stop.wait(2.0)  # another worker relays; stand by
                        continue
                    publisher = PricePublisher(self.settings)
                    try:
                        while not self.stop.is_set():
                            if not self.relay_once(conn, publisher):
                                self.maybe_auto_tick(conn)
                                self.maybe_prune(conn)
                                self.stop.wait(self.poll_seconds)
                    finally:
                        publisher.close()
            except (psycopg.Error, EmbedderError) as e:
                log.warning("outbox relay: %s; retrying in 2s", str(e).splitlines()[0])
                self.stop.wait(2.0)

    def relay_once(self, conn: psycopg.Connection, publisher: PricePublisher) -> int:
        """Publish one batch of unpublished outbox entries; returns how many."""
        rows = conn.execute(
            """SELECT id, kind, instrument_id, trade_date, close, volume, window_days, model_ids
               FROM prices_outbox WHERE published_at IS NULL ORDER BY id LIMIT %s""",
            (BATCH,),
        ).fetchall()
        if not rows:
            return 0
        pending: list[tuple] = []  # captured rows since the last tick, published as per-partition batches
        for _id, kind, instrument_id, trade_date, close, volume, window_days, model_ids in rows:
            if kind == "tick":
                self._publish_rows(publisher, pending)
                pending = []
                publisher.tick(Tick(run=LIVE_RUN, d=trade_date, w=window_days, m=tuple(model_ids)))
                self._ticked_through = max(self._ticked_through or trade_date, trade_date)
            else:
                pending.append((instrument_id, trade_date, close, volume))
                self.last_row_date = max(self.last_row_date or trade_date, trade_date)
        self._publish_rows(publisher, pending)
        publisher.flush()  # raises if Kafka did not acknowledge every message
        conn.execute("UPDATE prices_outbox SET published_at = now() WHERE id = ANY(%s)", ([r[0] for r in rows],))
        self.published += len(rows)
        self._last_activity = time.monotonic()
        return len(rows)

    def _publish_rows(self, publisher: PricePublisher, rows: list[tuple]) -> None:
        """Captured rows as row batches, each partition's in outbox order (one event per batch, not
        per row). They are sent as captured: the stream validates them and dead-letters bad rows."""
        by_partition: dict[int, list[tuple]] = {}
        for row in rows:
            by_partition.setdefault(partition_for(row[0], self.settings.partitions), []).append(row)
        for partition, own in by_partition.items():
            for start in range(0, len(own), ROWS_PER_MESSAGE):
                batch = RowBatch.model_construct(run=LIVE_RUN, window_days=self.settings.window_days,
                                                 rows=own[start:start + ROWS_PER_MESSAGE])
                publisher.row_batch(partition, batch)

    def maybe_auto_tick(self, conn: psycopg.Connection) -> None:
        """After a quiet period with new rows, tick the newest trade date seen (if enabled)."""
        quiet = self.settings.auto_tick_quiet_seconds
        if quiet <= 0 or self.last_row_date is None:
            return
        if self._ticked_through is not None and self._ticked_through >= self.last_row_date:
            return
        if time.monotonic() - self._last_activity < quiet:
            return
        enqueue_tick(conn, self.last_row_date, self.settings.window_days, list(self.settings.live_model_ids))
        log.info("auto tick for %s after %.0fs without new rows", self.last_row_date, quiet)


    def maybe_prune(self, conn: psycopg.Connection) -> None:
        """At most once a minute, when idle: drop published entries past their keep time."""
        keep = self.settings.outbox_keep_hours
        if keep <= 0 or time.monotonic() - self._pruned_at < PRUNE_EVERY_SECONDS:
            return
        self._pruned_at = time.monotonic()
        deleted = prune_outbox(conn, keep)
        if deleted:
            log.info("outbox: deleted %d published entries older than %.0f h", deleted, keep)


def prune_outbox(conn: psycopg.Connection, keep_hours: float) -> int:
    """Delete outbox entries published more than `keep_hours` ago; unpublished ones are never touched
    (the table would otherwise grow by every captured price forever)."""
    cur = conn.execute("DELETE FROM prices_outbox WHERE published_at < now() - make_interval(secs => %s)",
                       (keep_hours * 3600.0,))
    return cur.rowcount


def start_relay(settings: Settings, ready: threading.Event | None = None) -> tuple[OutboxRelay, threading.Thread]:
    """Run the relay in a daemon thread beside the worker, starting once `ready` is set."""
    relay = OutboxRelay(settings, poll_seconds=settings.outbox_poll_seconds)

    def run() -> None:
        while ready is not None and not ready.wait(0.5):
            if relay.stop.is_set():
                return
        relay.run()

    thread = threading.Thread(target=run, name="outbox-relay", daemon=True)
    thread.start()
    return relay, thread
