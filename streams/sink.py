"""The sink: embeddings and tick completions written to PostgreSQL in batches, in order, in the worker.

quix-streams' model: the sink lives in the process that computes, and an event
counts as processed (its offset may be committed) only once what it produced is
committed in PostgreSQL. `BatchingSink` takes the embedding batches of processed
events in order, groups them into transactions from a writer thread per connection
(each partition's by the same one, in order), and runs each submission's callback
(the event's ack) on the event loop after the commit.
`SinkWriter` is that transaction: it retries with backoff until PostgreSQL
commits (trap 1 of the design notes: a failed write never counts as done).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol

import psycopg

from shared.contract.errors import ServiceUnavailable
from shared.contract.messages import LIVE_RUN
from shared.metrics import StreamMetrics
from shared.store.db import connect
from shared.store.embedding_store import set_cause, write_embeddings
from shared.store.maintained_keys import queue_recompute, write_absent
from shared.store.tick_commits import completed_runs, record_tick_commits
from streams.output import EmbeddingBatch

log = logging.getLogger("embedder.sink")


def change_cause(batches: Sequence[EmbeddingBatch], shown: int = 4) -> tuple[str, str]:
    """(kind, detail) of a sink transaction for the versions it supersedes: live corrections (with the
    price changes), live ticks, replays or queries, by their runs, dates and partitions."""
    parts: list[str] = []
    kinds: set[str] = set()
    for b in batches:
        if b.done:
            kind = "live" if b.run == LIVE_RUN else "query" if b.run.startswith("query-") else "replay"
            dates = sorted({t.as_of for t in b.done})
            when = f"{dates[0]}" + (f"..{dates[-1]}" if len(dates) > 1 else "")
            parts.append(f"{'tick' if kind == 'live' else b.run} {when} p{b.partition}")
        else:
            kind = "correction" if b.run == LIVE_RUN else "replay"
            parts.append(b.cause or f"{b.run} p{b.partition}")
        kinds.add(kind)
    kind = next((k for k in ("correction", "live", "replay", "query") if k in kinds), "live")
    unique = list(dict.fromkeys(parts))
    more = f"; and {len(unique) - shown} more" if len(unique) > shown else ""
    return kind, "; ".join(unique[:shown]) + more


def newest_per_key(batches: Sequence[EmbeddingBatch]) -> dict[tuple, tuple]:
    """One row `(instrument, as_of, model, window_days, vector, claim)` per key of `batches`: the one
    computed from the newest prices (the highest claim), and of those the last (stream order)."""
    latest: dict[tuple, tuple] = {}
    get = latest.get
    for b in batches:
        claim, window_days = b.computed_from, b.window_days
        for i, d, m, v in b.items:
            key = (i, d, m)
            before = get(key)
            if before is None or claim is None or before[5] is None or claim >= before[5]:
                latest[key] = (i, d, m, window_days, v, claim)
    return latest


class SinkWriter:
    """Owns one connection; `write` is called from a worker thread, one batch at a time.

    `upserting` (a lock the writers of one sink share: `database_sink`) is held around the upsert statement of
    each transaction, and only there: staging, the absent keys, the completions and the commit of one writer
    still run beside another's upsert. Two upserts side by side into the same table and index pages cost
    PostgreSQL 9 % more CPU per embedding than taking turns (0.0182 against 0.0168 CPU-s per 1,000 in a whole
    replay, measured), and on a machine whose cores are all busy that CPU is the run's time. A transaction takes
    it once, before it holds any row lock, so a writer waiting for it never holds up the one upserting."""

    def __init__(
        self,
        database_url: str,
        max_backoff: float = 10.0,
        metrics: StreamMetrics | None = None,
        upserting: AbstractContextManager[object] | None = None,
    ):
        self.database_url = database_url
        self.max_backoff = max_backoff
        self.metrics = metrics
        self.upserting = upserting
        self._conn: psycopg.Connection | None = None
        self.retries = 0
        self.refused = 0
        """Embeddings refused since start: the table held them computed from newer prices."""
        self.last_written = 0
        """Embeddings (vectors, one per key) the last committed transaction wrote or had refused."""

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.database_url)
        return self._conn

    def write_once(self, batches: Sequence[EmbeddingBatch]) -> int:
        """One transaction: the batches' embeddings (where a key repeats, the one computed from the newest
        prices, then the last; an empty vector records the key as absent and deletes its stored row),
        fenced by their claims, and their ticks' completions. Returns how many embeddings the table
        refused (it held them computed from newer prices)."""
        conn = self._connection()
        try:
            batches = self._drop_completed_runs(conn, batches)
            set_cause(conn, *change_cause(batches))
            latest = newest_per_key(batches)
            rows = [row for row in latest.values() if row[4]]
            refused = write_embeddings(conn, rows, one_per_key=True, upserting=self.upserting).refused
            refused += write_absent(conn, [(*row[:4], row[5]) for row in latest.values() if not row[4]]).refused
            queue_recompute(conn, [key for b in batches for key in b.recheck])
            done = [
                {
                    "run": b.run,
                    "scope": b.scope,
                    "p": b.partition,
                    "d": t.as_of,
                    "e": t.embedded,
                    "i": t.insufficient,
                    "m": t.missing_today,
                    "x": b.rows_missing,
                    "again": b.redelivered,
                }
                for b in batches
                for t in b.done
            ]
            if done:
                with conn.cursor() as cur:
                    record_tick_commits(cur, done)
            conn.commit()
            self.last_written = len(rows)
            return refused
        except BaseException:
            try:
                conn.rollback()
            except psycopg.Error:
                conn.close()
            raise

    @staticmethod
    def _drop_completed_runs(conn: psycopg.Connection, batches: Sequence[EmbeddingBatch]) -> Sequence[EmbeddingBatch]:
        """Re-delivered messages of a replay that already completed are stale: skip them, so they can
        never overwrite newer embeddings (e.g. after a correction)."""
        runs = {b.run for b in batches} - {LIVE_RUN}
        if not runs:
            return batches
        finished = completed_runs(conn, list(runs))
        if not finished:
            return batches
        log.info("skipping re-delivered messages of completed runs %s", sorted(finished))
        return [b for b in batches if b.run not in finished]

    def write_until_committed(self, batches: Sequence[EmbeddingBatch]) -> None:
        """Write the batch; on a database error wait (exponential backoff) and try again, forever."""
        delay = 0.2
        while True:
            try:
                started = time.monotonic()
                refused = self.write_once(batches)
                self.refused += refused
                self._observe(batches, time.monotonic() - started, refused)
                return
            except (psycopg.OperationalError, psycopg.InterfaceError, ServiceUnavailable) as e:
                self.retries += 1
                if self.metrics:
                    self.metrics.sink_retries.inc()
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                log.warning("sink write failed (%s); retrying in %.1fs", str(e).splitlines()[0], delay)
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    def _observe(self, batches: Sequence[EmbeddingBatch], seconds: float, refused: int = 0) -> None:
        if refused:
            log.info("sink: %d embedding(s) refused: the table holds them computed from newer prices", refused)
        if not self.metrics:
            return
        m = self.metrics
        if refused:
            m.writes_refused.labels(change_cause(batches)[0]).inc(refused)
        n = self.last_written
        m.sink_commit_seconds.observe(seconds)
        m.sink_batch_embeddings.observe(n)
        m.sink_embeddings_committed.inc(n)
        m.db_last_upsert.set(time.time())
        newest: dict[str, date] = {}
        for b in batches:
            kind = LIVE_RUN if b.run == LIVE_RUN else "replay"  # bounded label values
            for t in b.done:
                if kind not in newest or t.as_of > newest[kind]:
                    newest[kind] = t.as_of
        for run, as_of in newest.items():
            m.last_committed_as_of.labels(run).set(datetime.combine(as_of, datetime.min.time(), UTC).timestamp())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


@dataclass
class _Submission:
    batches: list[EmbeddingBatch]
    done: Callable[[], object]
    size: int


class Writer(Protocol):
    """What a sink lane writes with (`SinkWriter`; a recording one in tests)."""

    def write_until_committed(self, batches: Sequence[EmbeddingBatch]) -> None: ...


@dataclass(frozen=True)
class _Grouping:
    """How a lane groups what is queued into one transaction."""

    most_embeddings: int
    longest_wait_seconds: float


class _Lane:
    """One writer thread and its queue: what it is given, it writes in submission order, grouped into
    transactions, and hands each written group to `written` (the sink's acknowledgement)."""

    def __init__(self, writer: Writer, grouping: _Grouping, written: Callable[[list[_Submission]], None], name: str):
        self.writer = writer
        self.grouping = grouping
        self.written = written
        self.queue: queue.Queue[_Submission | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        grouping = self.grouping
        while True:
            first = self.queue.get()
            if first is None:
                return
            group, size = [first], first.size
            deadline = time.monotonic() + grouping.longest_wait_seconds
            while size < grouping.most_embeddings:
                try:
                    nxt = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                group.append(nxt)
                size += nxt.size
            self.writer.write_until_committed([b for s in group for b in s.batches])
            self.written(group)


class BatchingSink:
    """Embedding batches of processed events, written by one thread per writer (a lane, with its own
    connection), each partition's in submission order by the same lane.

    A key is always computed by the same partition (instruments are partitioned by id), so per-partition
    order is every order a key's writes need, and the lanes commit side by side: one PostgreSQL backend
    upserting alone was the last 3.5 s of a whole-data-set replay, with a core idle. (Their upsert statements
    take turns: `SinkWriter`, `database_sink`.)

    `submit` (on the event loop) queues a submission and returns; its `done` callback runs on the
    loop once the transaction holding it has committed. `write` waits for that commit. A lane
    groups what is queued into one transaction of up to `batch_embeddings`, waiting at most
    `batch_seconds` for more. `submit` waits while `max_pending` embeddings are queued in all (backpressure:
    a database outage stops the stream from reading on, instead of filling memory).
    """

    def __init__(
        self,
        writers: Sequence[Writer],
        batch_embeddings: int = 20_000,
        batch_seconds: float = 0.02,
        max_pending: int = 50_000,
    ):
        if not writers:
            raise ValueError("a sink needs at least one writer")
        self.max_pending = max_pending
        grouping = _Grouping(batch_embeddings, batch_seconds)
        self._lanes = [
            _Lane(w, grouping, self._acknowledge, "sink" if len(writers) == 1 else f"sink-{k}")
            for k, w in enumerate(writers)
        ]
        self._pending = 0
        self._room: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Event()
        self._room.set()
        for lane in self._lanes:
            lane.thread.start()
        self._started = True

    def _lane(self, batches: list[EmbeddingBatch]) -> _Lane:
        """The lane of the batches' partition (a submission holds one event's output: one partition)."""
        partition = batches[0].partition if batches else 0
        return self._lanes[partition % len(self._lanes)]

    async def submit(self, batches: list[EmbeddingBatch], done: Callable[[], object]) -> None:
        """Queue `batches`; `done` runs on this loop after their commit. Waits while the queue is full."""
        if not self._started:
            self._start()
        room = self._room
        assert room is not None  # _start made it
        while self._pending >= self.max_pending:
            room.clear()
            await room.wait()
        size = sum(b.size for b in batches) or 1
        self._pending += size
        self._lane(batches).queue.put(_Submission(batches, done, size))

    async def write(self, batches: list[EmbeddingBatch]) -> None:
        """Queue `batches` and return once they are committed (after everything of their partition queued before)."""
        committed = asyncio.get_running_loop().create_future()

        def commit() -> None:
            if not committed.done():
                committed.set_result(None)

        await self.submit(batches, commit)
        await committed

    def _released(self, size: int) -> None:
        self._pending -= size
        if self._pending < self.max_pending and self._room is not None:
            self._room.set()

    def _acknowledge(self, group: list[_Submission]) -> None:
        """Run each written submission's callbacks on the loop. Once the loop has closed (the worker is
        stopping) none can run; the lane still writes what was queued, as `stop` says: those events,
        never acked, come again and rewrite the same."""
        loop = self._loop
        assert loop is not None  # _start set it before the lanes began
        try:
            for submission in group:
                loop.call_soon_threadsafe(self._released, submission.size)
                loop.call_soon_threadsafe(submission.done)
        except RuntimeError:
            return  # the loop has closed

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to `timeout` in all), then end the lanes. Unwritten submissions are
        never acked, so their events come again."""
        if not self._started:
            return
        for lane in self._lanes:
            lane.queue.put(None)
        deadline = time.monotonic() + timeout
        for lane in self._lanes:
            lane.thread.join(max(0.0, deadline - time.monotonic()))


def database_sink(
    database_url: str,
    connections: int,
    metrics: StreamMetrics | None = None,
    batch_embeddings: int = 20_000,
    batch_seconds: float = 0.02,
    max_pending: int = 50_000,
) -> BatchingSink:
    """A worker's sink: `connections` lanes, each with its own `SinkWriter`, taking turns at the upsert."""
    upserting = threading.Lock()
    writers = [SinkWriter(database_url, metrics=metrics, upserting=upserting) for _ in range(connections)]
    return BatchingSink(writers, batch_embeddings, batch_seconds, max_pending)
