"""The worker's continuous parity audit: stored embeddings recomputed from `prices_daily` and compared.

Every `EMBEDDER_PARITY_AUDIT_SECONDS` (60) the audit takes a sample of stored keys
(`EMBEDDER_PARITY_SAMPLE_KEYS`, block sampling, so a round costs the same at any table size) and every
key the correction path recomputed since the last round, recomputes them with the one encoder and
compares bytes (`backfill.verify.compare`). A mismatch is counted (`embedder_parity_mismatches_total`),
logged with its key, recorded in `embedder_parity_audits` (shown by `embedder status`) and, with
`EMBEDDER_PARITY_REPAIR` (default), queued for the correction path, which rewrites it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg.types.json import Jsonb

from backfill.recompute import Key, expected_vectors
from backfill.verify import Finding, compare
from shared.background import start_when_ready
from shared.config import Settings
from shared.db import connect, one
from shared.embedding_store import ENTITY_TYPE
from shared.errors import EmbedderError
from shared.maintained_keys import MaintainedKey, queue_recompute
from shared.metrics import StreamMetrics
from shared.models import MODELS

log = logging.getLogger("embedder.parity")
MAX_CORRECTION_KEYS = 20_000
KEEP_DAYS = 7


def sample_keys(conn: psycopg.Connection, n: int) -> list[MaintainedKey]:
    """About `n` stored maintained keys, drawn at random (block sampling on a large table)."""
    if n <= 0:
        return []
    estimate = (
        one(conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'numeric_window_embeddings'::regclass"))[0] or 0
    )
    source = "numeric_window_embeddings"
    if estimate > 20 * n:
        source += f" TABLESAMPLE SYSTEM ({min(100.0, 300.0 * n / estimate):.6f})"
    rows = conn.execute(
        f"""SELECT entity_id, as_of_date, model_id, embedder_window_days(window_spec) FROM {source}
            WHERE entity_type = '{ENTITY_TYPE}' ORDER BY random() LIMIT %s""",
        (n,),
    ).fetchall()
    return [MaintainedKey(i, d, m, w) for i, d, m, w in rows if w and m in MODELS]


def stored_vectors(conn: psycopg.Connection, keys: Sequence[MaintainedKey]) -> dict[Key, tuple[int | None, bytes]]:
    """The stored (window, vector) of each key that has a row."""
    if not keys:
        return {}
    with conn.cursor(binary=True) as cur:
        cur.execute(
            f"""SELECT e.entity_id, e.as_of_date, e.model_id, embedder_window_days(e.window_spec), e.vector
                FROM unnest(%s::text[], %s::date[], %s::text[]) AS k(i, d, m)
                JOIN numeric_window_embeddings e ON e.entity_type = '{ENTITY_TYPE}' AND e.entity_id = k.i
                 AND e.as_of_date = k.d AND e.model_id = k.m""",
            ([k.entity_id for k in keys], [k.as_of_date for k in keys], [k.model_id for k in keys]),
        )
        return {(i, d, m): (n, bytes(v) if v is not None else b"") for i, d, m, n, v in cur.fetchall()}


def in_flight(conn: psycopg.Connection, instrument_ids: Sequence[str]) -> set[str]:
    """Instruments with a captured change not yet applied everywhere (unpublished, or queued for the
    correction path): their keys may differ for a moment, and are not judged now."""
    return {
        r[0]
        for r in conn.execute(
            """SELECT instrument_id FROM embedder_recompute_queue WHERE instrument_id = ANY(%(ids)s)
           UNION
           SELECT instrument_id FROM embedder_outbox_changes
           WHERE published_at IS NULL AND instrument_id = ANY(%(ids)s)""",
            {"ids": list(set(instrument_ids))},
        )
    }


def check_keys(conn: psycopg.Connection, keys: Sequence[MaintainedKey]) -> tuple[list[Finding], int]:
    """Recompute `keys` and compare them with the table, in one snapshot of the database; keys of
    instruments with changes in flight are left for a later round. Returns (findings, keys checked)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        busy = in_flight(conn, [k.entity_id for k in keys])
        keys = [k for k in keys if k.entity_id not in busy]
        return compare(keys, stored_vectors(conn, keys), expected_vectors(conn, keys)), len(keys)


@dataclass
class ParityAudit:
    settings: Settings
    metrics: StreamMetrics | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    _corrected: list[MaintainedKey] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def corrected(self, keys: list[MaintainedKey]) -> None:
        """The correction path recomputed `keys`: check them in the next round (at most a bounded number)."""
        with self._lock:
            room = MAX_CORRECTION_KEYS - len(self._corrected)
            self._corrected.extend(keys[: max(room, 0)])

    def run(self) -> None:
        while not self.stop.wait(self.settings.parity_audit_seconds):
            try:
                with connect(self.settings.database_url, autocommit=True) as conn:
                    self.round(conn)
            except (psycopg.Error, EmbedderError) as e:
                log.warning(
                    "parity audit: %s; next round in %.0fs", str(e).splitlines()[0], self.settings.parity_audit_seconds
                )

    def round(self, conn: psycopg.Connection) -> list[Finding]:
        """One audit round: the sample and the corrected keys, checked, counted, recorded."""
        with self._lock:
            corrected, self._corrected = self._corrected, []
        findings: list[Finding] = []
        for source, keys in (
            ("sample", sample_keys(conn, self.settings.parity_sample_keys)),
            ("correction", corrected),
        ):
            if not keys:
                continue
            found, checked = check_keys(conn, keys)
            findings.extend(found)
            if self.metrics:
                self.metrics.parity_checked.labels(source).inc(checked)
                for f in found:
                    self.metrics.parity_mismatches.labels(f.kind).inc()
            for f in found[:20]:
                log.error(
                    "parity audit: %s embedding %s as of %s (%s, window %s) differs from prices_daily",
                    f.kind,
                    f.entity_id,
                    f.as_of_date,
                    f.model_id,
                    f.window_days,
                )
            conn.execute(
                """INSERT INTO embedder_parity_audits (source, keys_checked, mismatches, examples)
                   VALUES (%s, %s, %s, %s)""",
                (source, checked, len(found), Jsonb([f.as_dict() for f in found[:5]])),
            )
        if findings and self.settings.parity_repair:
            with conn.transaction():
                queue_recompute(conn, [(f.entity_id, f.as_of_date) for f in findings])
        conn.execute(
            "DELETE FROM embedder_parity_audits WHERE checked_at < now() - make_interval(days => %s)", (KEEP_DAYS,)
        )
        if self.metrics:
            self.metrics.parity_last_run.set(time.time())
        return findings


def start_parity_audit(
    settings: Settings, ready: threading.Event | None = None, metrics: StreamMetrics | None = None
) -> tuple[ParityAudit, threading.Thread]:
    """Run the audit in a daemon thread, its first round one period after `ready` is set."""
    audit = ParityAudit(settings, metrics)
    if settings.parity_audit_seconds <= 0:
        audit.stop.set()
    return audit, start_when_ready("parity-audit", audit.run, audit.stop, ready)
