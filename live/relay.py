"""Live capture: relay `prices_outbox` to the prices topic in id order, marking entries only after Kafka acks.

The triggers (migrations 0004/0007/0010) write the keys of every inserted, changed or deleted price
into the outbox in the same transaction, grouped per statement (`keys` entries); the relay reads
those keys' rows from `prices_daily` when it publishes them (a key without a row is published as a
deletion). `embedder tick` writes ticks there too, so a tick can never overtake the rows committed
before it; bootstrap snapshots (live/bootstrap.py) take their place in the same order. One relay
is active at a time (a PostgreSQL advisory lock), so several workers never interleave the order. If
anything dies between the publish and the mark, the entries are published again: the stream is
idempotent, so nothing is lost or doubled. The relay also keeps capture on (live/capture.py), and does
its housekeeping when idle (live/housekeeping.py); what writes the outbox is shared/store/outbox.py.

Every captured row is checked with the shared row rule before it is published;
a row that fails goes alone to the dead-letter topic (with its outbox id), and
the rows beside it are published.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import TYPE_CHECKING

import psycopg

from live.bootstrap import mark_published, read_snapshot
from live.capture import start_capture
from live.housekeeping import Housekeeping, IdleTask
from shared.background import start_when_ready
from shared.broker.topics import head_block, partition_for
from shared.contract.config import Settings
from shared.contract.encoder import retention_days
from shared.contract.errors import EmbedderError
from shared.contract.messages import (
    LIVE_RUN,
    Deletion,
    Row,
    Tick,
    dead_letter_record,
    is_deletion,
    row_batches,
    row_payload,
)
from shared.contract.validation import key_problem, latest_trade_date, row_problem
from shared.metrics import StreamMetrics
from shared.store.db import connect, one
from shared.store.maintained_keys import queue_captured_changes
from shared.store.outbox import OUTBOX_CHANNEL, OutboxKind, captured_rows, mark_published_while_live, unpublished
from shared.store.write_claims import next_round, stamp

if TYPE_CHECKING:  # Kafka is imported where the relay runs, not by `embedder tick` or queries
    from shared.broker.publisher import PricePublisher

log = logging.getLogger("embedder.outbox")
RELAY_LOCK = 727_001  # pg advisory lock key: one active relay per database
RELAY_APPLICATION = "embedder relay"
RELAY_PROTOCOL = 2
"""What the relaying worker understands, in its connection's application name (`relay_holder`): 2 adds
query ticks that read their look-back from prices_daily (a command asks them only of such a worker)."""
BATCH = 5000
PENDING_ROWS = 50_000
"""Captured rows the relay gathers before it publishes them (bounds its memory)."""
ROUND_KEYS = 200_000
"""Captured keys one round publishes at most (beyond its first entry): bounds the time to the mark."""


@dataclass
class OutboxRelay:
    """Polls the outbox and publishes it; `run` blocks until `stop` is set."""

    settings: Settings
    metrics: StreamMetrics | None = None
    poll_seconds: float = 0.5
    idle_tasks: list[IdleTask] = field(default_factory=list)
    """Run when the outbox is drained (the tick schedule), with the relay's connection."""
    stop: threading.Event = field(default_factory=threading.Event)
    published: int = 0
    dead_lettered: int = 0
    _failing_since: float | None = None
    _round: int = 0
    _index: int = 0
    housekeeping: Housekeeping = field(init=False)

    def __post_init__(self) -> None:
        self.housekeeping = Housekeeping(self.settings, self.metrics, self.by, self.idle_tasks)

    @property
    def by(self) -> str:
        return f"{RELAY_APPLICATION} v{RELAY_PROTOCOL} {socket.gethostname()}:{os.getpid()}"[:63]

    def run(self) -> None:
        """Hold the relay lock, then relay until stopped; reconnect after database or broker errors."""
        from kafka.errors import KafkaError

        from shared.broker.publisher import PricePublisher

        while not self.stop.is_set():
            try:
                with connect(self.settings.database_url, autocommit=True) as conn:
                    conn.execute("SELECT set_config('application_name', %s, false)", (self.by,))
                    if not one(conn.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,)))[0]:
                        self.housekeeping.gauge(conn)
                        self.stop.wait(2.0)  # another worker relays; stand by
                        continue
                    log.info("relaying prices_outbox (this worker holds the relay lock)")
                    start_capture(conn, self.settings.capture_idle_limit, self.by)
                    self.housekeeping.relaying()  # the bootstrap check at once: history no trigger saw
                    publisher = PricePublisher(self.settings)
                    conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
                    try:
                        while not self.stop.is_set():
                            self.housekeeping.maybe_heartbeat(conn)
                            if not self.relay_once(conn, publisher):
                                self.housekeeping.when_idle(conn)
                                self.idle_wait(conn)
                    finally:
                        publisher.close()
            except (psycopg.Error, EmbedderError, KafkaError) as e:
                problem = str(e).splitlines()[0] if str(e) else type(e).__name__
                if self._failing_since is None:  # logged once per state change, not every 2 s
                    self._failing_since = time.monotonic()
                    log.warning("outbox relay: %s; retrying every 2 s", problem)
                else:
                    log.debug("outbox relay: %s; retrying in 2 s", problem)
                self.stop.wait(2.0)

    def idle_wait(self, conn: psycopg.Connection) -> None:
        """Until the next poll, or sooner when a tick or query is queued (`wake_relay`): captured rows
        wait for a poll (a notification per row would cost every writer), a tick does not."""
        for _ in conn.notifies(timeout=self.poll_seconds, stop_after=1):
            pass

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.warning("outbox relay: relaying again after %.0f s", time.monotonic() - self._failing_since)
            self._failing_since = None

    def relay_once(self, conn: psycopg.Connection, publisher: PricePublisher) -> int:
        """Publish the next unpublished outbox entries (up to one snapshot, about ROUND_KEYS captured
        keys); returns how many."""
        entries = unpublished(conn, BATCH)
        if not entries:
            self._recovered()
            return 0
        this_round: list[int] = []
        keys = 0
        for entry in entries:
            if this_round and keys >= ROUND_KEYS:
                break
            this_round.append(entry.id)
            keys += entry.keys
            if entry.kind == OutboxKind.SNAPSHOT:
                break
        entries = entries[: len(this_round)]
        # Before anything is published: changes reaching keys stored now go to the database path too
        # (history the windows do not hold, rows other paths wrote). A key the stream writes after
        # this is computed from windows that hold the change. In the same transaction the round gets its
        # number: what the correction path reads after it holds every change of the round, and each
        # message below claims a position in it (shared/store/write_claims.py).
        with conn.transaction():
            self._round = next_round(conn)
            self._index = 0
            queue_captured_changes(conn, this_round)
        latest = latest_trade_date()
        keep = retention_days(self.settings.window_days, self.settings.retention_slack_days)
        pending: list[tuple] = []  # captured rows since the last tick: (row or deletion, outbox id)
        snapshots: dict[int, Counter] = {}
        for entry in entries:
            if entry.kind == OutboxKind.TICK:
                assert entry.trade_date is not None and entry.window_days is not None, f"tick entry {entry.id}"
                self._publish_rows(publisher, pending, latest)
                pending = []
                selection = entry.selection or {}
                publisher.tick(
                    Tick(
                        f=self._next_stamp(),
                        run=LIVE_RUN,
                        d=entry.trade_date,
                        ds=tuple(entry.more_dates) if entry.more_dates else None,
                        w=entry.window_days,
                        m=tuple(entry.model_ids or ()),
                        mk=entry.market_id,
                        o=entry.id,
                        q=entry.query_run,
                        lim=selection.get("limit"),
                        off=selection.get("offset", 0),
                        ids=tuple(selection["ids"]) if selection.get("ids") else None,
                        db=True if selection.get("lookback") == "database" else None,
                    )
                )
                if entry.query_run is None:
                    self.housekeeping.ticked(entry.trade_date)
            elif entry.kind == OutboxKind.SNAPSHOT:
                self._publish_rows(publisher, pending, latest)
                pending = []
                rows = read_snapshot(conn, entry.id, keep)
                self._publish_rows(publisher, [(r, entry.id) for r in rows], latest)
                snapshots[entry.id] = Counter(r[0] for r in rows if not is_deletion(r))
            elif entry.kind == OutboxKind.KEYS:
                # Gathered with the rows around them (a platform writing one row per statement makes one entry
                # per row): one message per row would rewrite a head block of the worker per row.
                for part in captured_rows(conn, entry.id):
                    pending.extend((r, entry.id) for r in part)
                    self.housekeeping.saw_rows(part, latest)
                    if len(pending) >= PENDING_ROWS:
                        self._publish_rows(publisher, pending, latest)
                        pending = []
            elif entry.kind == OutboxKind.DELETE:
                pending.append(((entry.instrument_id, entry.trade_date), entry.id))
            else:
                pending.append(((entry.instrument_id, entry.trade_date, entry.close, entry.volume), entry.id))
                self.housekeeping.saw_rows([(entry.instrument_id, entry.trade_date, entry.close, entry.volume)], latest)
        self._publish_rows(publisher, pending, latest)
        publisher.flush()  # raises if Kafka did not acknowledge every message
        # Marked published only while this worker's layout is the live one: after `embedder live repartition`
        # what was just sent went to the old layout's topic, so the new layout's relay sends it again.
        marked = mark_published_while_live(conn, this_round, self.settings.app_id, self.settings.live_generation)
        if not marked:
            log.warning(
                "outbox relay: the live layout changed (embedder live repartition); this worker stops "
                "relaying and restarts on the new layout"
            )
            self.stop.set()
            return 0
        if snapshots:
            mark_published(conn, snapshots)
            self._count_bootstrap(snapshots)
        self.published += len(this_round)
        self.housekeeping.active()
        self._recovered()
        return len(this_round)

    def _publish_rows(self, publisher: PricePublisher, entries: list[tuple], latest: date) -> None:
        """Captured rows as size-cut row batches per partition, each partition's in outbox order; a row
        the shared rule refuses is dead-lettered alone, with its outbox id."""
        by_partition: dict[int, list[Row | Deletion]] = {}
        for row, entry_id in entries:
            if is_deletion(row) and key_problem(row[0], row[1], latest):
                continue  # deleting a row the rule refused (fixing a typo'd date): it never reached a window
            problem = None if is_deletion(row) else row_problem(row[0], row[1], row[2], row[3], latest)
            if problem:
                publisher.dead_letter(
                    dead_letter_record(problem, "prices_outbox", None, entry_id, row_payload(LIVE_RUN, row))
                )
                log.warning("dead-letter prices_outbox id %s: %s", entry_id, problem)
                self.dead_lettered += 1
                if self.metrics:
                    self.metrics.dead_letters.inc()
                continue
            by_partition.setdefault(partition_for(row[0], self.settings.partitions), []).append(row)
        for partition, rows in by_partition.items():
            # In the order of the heads' blocks (stable: an instrument's rows keep theirs): a day of a partition
            # is cut into several messages, and each then rewrites only the blocks of its instruments.
            rows.sort(key=lambda row: head_block(row[0]))
            for batch in row_batches(LIVE_RUN, self.settings.window_days, rows):
                publisher.row_batch(partition, replace(batch, stamp=self._next_stamp()))

    def _next_stamp(self) -> int:
        """The claim of the next message of this round: after every message the round sent before it."""
        self._index += 1
        return stamp(self._round, self._index)

    def _count_bootstrap(self, snapshots: dict[int, Counter]) -> None:
        instruments = sum(len(c) for c in snapshots.values())
        rows = sum(sum(c.values()) for c in snapshots.values())
        log.info("bootstrap: loaded %d rows of %d instrument(s) from prices_daily", rows, instruments)
        if self.metrics:
            self.metrics.bootstrap_instruments.inc(instruments)
            self.metrics.bootstrap_rows.inc(rows)


@dataclass(frozen=True)
class RelayHolder:
    """The database session holding the relay lock: which worker relays the outbox."""

    pid: int
    application: str
    client: str | None
    since: datetime

    @property
    def protocol(self) -> int:
        """`RELAY_PROTOCOL` of the relaying worker (1: from before the application name carried it)."""
        words = self.application.split()
        if len(words) > 2 and words[2].startswith("v") and words[2][1:].isdigit():
            return int(words[2][1:])
        return 1


def relay_holder(conn: psycopg.Connection) -> RelayHolder | None:
    """Who holds the relay lock now (None: no worker relays, so nothing captured reaches Kafka)."""
    row = conn.execute(
        """SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %s AND l.objsubid = 1
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        (RELAY_LOCK,),
    ).fetchone()
    return RelayHolder(*row) if row else None


def start_relay(
    settings: Settings,
    ready: threading.Event | None = None,
    metrics: StreamMetrics | None = None,
    idle_tasks: list[IdleTask] | None = None,
) -> tuple[OutboxRelay, threading.Thread]:
    """Run the relay in a daemon thread beside the worker, starting once `ready` is set."""
    relay = OutboxRelay(settings, metrics, poll_seconds=settings.outbox_poll_seconds, idle_tasks=idle_tasks or [])
    return relay, start_when_ready("outbox-relay", relay.run, relay.stop, ready)
