"""The sink's database write: embeddings and tick completions in one transaction, retried until it lands.

Faust's `stream.take()` acks its buffer when the loop body finishes, so a
failed write must never escape the body: `write_until_committed` retries with
backoff instead (trap 1 of the design notes), and only returns once PostgreSQL
has committed.
"""
from __future__ import annotations

import logging
import time
from datetime import date, datetime, timezone
from collections.abc import Sequence

import psycopg

from shared.db import connect
from shared.embedding_store import delete_embeddings, upsert_embeddings
from shared.errors import ServiceUnavailable
from shared.messages import LIVE_RUN, EmbeddingBatch
from shared.metrics import StreamMetrics

log = logging.getLogger("embedder.sink")


class SinkWriter:
    """Owns one connection; `write` is called from a worker thread, one batch at a time."""

    def __init__(self, database_url: str, max_backoff: float = 10.0, metrics: StreamMetrics | None = None):
        self.database_url = database_url
        self.max_backoff = max_backoff
        self.metrics = metrics
        self._conn: psycopg.Connection | None = None
        self.retries = 0

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.database_url)
        return self._conn

    def write_once(self, batches: Sequence[EmbeddingBatch]) -> None:
        """One transaction: the batches' embeddings (in order: where a key repeats, the last item
        wins, and an empty vector deletes the stored row) and their ticks' completions."""
        conn = self._connection()
        try:
            batches = self._drop_completed_runs(conn, batches)
            latest: dict[tuple, tuple] = {}
            for b in batches:
                for i, d, m, v in b.items:
                    latest[(i, d, m)] = (i, d, m, b.window_days, v)
            upsert_embeddings(conn, (row for row in latest.values() if row[4]))
            delete_embeddings(conn, [key for key, row in latest.items() if not row[4]])
            done = [(b.run, b.scope, b.partition, t.as_of, t.embedded, t.insufficient, t.missing_today, b.rows_missing)
                    for b in batches for t in b.done]
            if done:
                with conn.cursor() as cur:
                    cur.executemany(
                        """INSERT INTO embedder_tick_commits (run_id, scope, source_partition, as_of_date,
                                                              embeddings, insufficient, missing_today, rows_missing)
                           VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                           ON CONFLICT (run_id, scope, source_partition, as_of_date)
                           DO UPDATE SET embeddings = EXCLUDED.embeddings, insufficient = EXCLUDED.insufficient,
                                         missing_today = EXCLUDED.missing_today,
                                         rows_missing = EXCLUDED.rows_missing, committed_at = now()""",
                        done,
                    )
            conn.commit()
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
        finished = {r[0] for r in conn.execute(
            "SELECT run_id FROM embedder_runs WHERE run_id = ANY(%s) AND completed_at IS NOT NULL", (list(runs),))}
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
                self.write_once(batches)
                self._observe(batches, time.monotonic() - started)
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

    def _observe(self, batches: Sequence[EmbeddingBatch], seconds: float) -> None:
        if not self.metrics:
            return
        m = self.metrics
        n = sum(1 for b in batches for item in b.items if item[3])
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
            m.last_committed_as_of.labels(run).set(
                datetime.combine(as_of, datetime.min.time(), timezone.utc).timestamp())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
