"""The worker's continuous parity audit: stored embeddings recomputed from `prices_daily` and compared.

Every `EMBEDDER_PARITY_AUDIT_SECONDS` (60) the audit takes keys where a stale one is most likely — keys
rewritten since its last round, keys the recently published price changes reach, keys of the dates
recently ticked, keys recently recorded absent (no embedding: nothing stored to sample), every key the
correction path recomputed — beside a uniform sample
(`EMBEDDER_PARITY_SAMPLE_KEYS`, block sampling) and the next stretch of a sweep that covers the whole
table every `EMBEDDER_PARITY_SWEEP_HOURS` (24); it recomputes them with the one encoder and compares
bytes (`backfill.verify.compare`). A mismatch is counted (`embedder_parity_mismatches_total`),
logged with its key, recorded in `embedder_parity_audits` (shown by `embedder status`) and, with
`EMBEDDER_PARITY_REPAIR` (default), queued for the correction path, which rewrites it.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

from backfill.recompute import Key, expected_vectors
from backfill.verify import Finding, compare
from shared.background import start_when_ready
from shared.contract.config import Settings
from shared.contract.errors import EmbedderError
from shared.contract.models import MODELS
from shared.metrics import StreamMetrics
from shared.store.db import connect, one
from shared.store.embedding_store import ENTITY_TYPE
from shared.store.maintained_keys import (
    MaintainedKey,
    absent_keys_recorded_since,
    affected_keys,
    queue_recompute,
    queued_or_unpublished,
    stored_keys_after,
    stored_keys_at,
)
from shared.store.outbox import changes_published_since
from shared.store.tick_commits import days_ticked_since

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
    return queued_or_unpublished(conn, instrument_ids)


def check_keys(conn: psycopg.Connection, keys: Sequence[MaintainedKey]) -> tuple[list[Finding], int]:
    """Recompute `keys` and compare them with the table, in one snapshot of the database; keys of
    instruments with changes in flight are left for a later round. Returns (findings, keys checked)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        busy = in_flight(conn, [k.entity_id for k in keys])
        keys = [k for k in keys if k.entity_id not in busy]
        return compare(keys, stored_vectors(conn, keys), expected_vectors(conn, keys)), len(keys)


AuditSource = Callable[[psycopg.Connection, "ParityAudit"], list[MaintainedKey]]


def keys_revised_since(conn: psycopg.Connection, since: datetime, n: int) -> list[MaintainedKey]:
    """Up to `n` stored keys rewritten since `since` (the versions the history keeps, newest first): where a
    write from older prices would show. Nothing while history is off."""
    rows = conn.execute(
        f"""SELECT e.entity_id, e.as_of_date, e.model_id, embedder_window_days(e.window_spec)
            FROM (SELECT DISTINCT ON (entity_id, as_of_date, model_id) entity_id, as_of_date, model_id, recorded_to
                  FROM numeric_window_embedding_versions
                  WHERE recorded_to >= %s AND entity_type = '{ENTITY_TYPE}' AND change = 'update'
                  ORDER BY entity_id, as_of_date, model_id, recorded_to DESC) v
            JOIN numeric_window_embeddings e ON e.entity_type = '{ENTITY_TYPE}' AND e.entity_id = v.entity_id
             AND e.as_of_date = v.as_of_date AND e.model_id = v.model_id
            ORDER BY v.recorded_to DESC LIMIT %s""",
        (since, n),
    ).fetchall()
    return _maintained(rows)


def keys_of_changed_prices(conn: psycopg.Connection, since: datetime, n: int) -> list[MaintainedKey]:
    """About `n` maintained keys (drawn at random) that the price changes published since `since` reach."""
    keys = affected_keys(conn, changes_published_since(conn, since, 5000))
    return random.sample(keys, n) if len(keys) > n else keys


def keys_of_ticks_since(conn: psycopg.Connection, since: datetime, n: int) -> list[MaintainedKey]:
    """About `n` stored keys of the as_of dates ticks committed since `since` (a partition moved to another
    worker computes them again: what a worker frozen past its session timeout may have written)."""
    dates = days_ticked_since(conn, since, 50)
    if not dates:
        return []
    return _maintained(stored_keys_at(conn, dates, n))


def keys_recorded_absent_since(conn: psycopg.Connection, since: datetime, n: int) -> list[MaintainedKey]:
    """Up to `n` keys recorded absent since `since`, newest first: a tick or a correction found no embedding for
    them. Where that was wrong (a window missing rows it should hold) the key has no stored row, so no other
    source — each reads stored keys — would ever look at it again."""
    return _maintained(absent_keys_recorded_since(conn, since, n))


def sweep_keys(conn: psycopg.Connection, n: int) -> list[MaintainedKey]:
    """The next `n` stored keys in key order after the shared cursor (`embedder_parity_sweep`), which moves
    on in the same transaction (several workers take ranges of their own) and starts over at the end: the
    whole table is covered in a bounded time however large it grows."""
    if n <= 0:
        return []
    with conn.transaction():
        cursor = conn.execute(
            "SELECT entity_id, as_of_date, model_id FROM embedder_parity_sweep FOR UPDATE"
        ).fetchone() or (None, None, None)
        rows = stored_keys_after(conn, cursor, n)
        last = rows[-1][:3] if len(rows) == n else (None, None, None)  # short: the pass is complete
        conn.execute(
            """UPDATE embedder_parity_sweep SET entity_id = %s, as_of_date = %s, model_id = %s,
                   passes = passes + (CASE WHEN %s::text IS NULL THEN 1 ELSE 0 END),
                   pass_started_at = CASE WHEN %s::text IS NULL THEN now() ELSE pass_started_at END""",
            (*last, last[0], cursor[0]),
        )
    return _maintained(rows)


def sweep_share(conn: psycopg.Connection, period_seconds: float, sweep_hours: float) -> int:
    """Keys per round so that a sweep covers the table in `sweep_hours` (0: no sweep)."""
    if sweep_hours <= 0 or period_seconds <= 0:
        return 0
    estimate = (
        one(conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'numeric_window_embeddings'::regclass"))[0] or 0
    )
    rounds = max(sweep_hours * 3600.0 / period_seconds, 1.0)
    return max(1, math.ceil(max(float(estimate), 0.0) / rounds)) if estimate > 0 else 100


def _maintained(rows: Sequence[tuple]) -> list[MaintainedKey]:
    return [MaintainedKey(i, d, m, w) for i, d, m, w in rows if w and m in MODELS]


@dataclass
class ParityAudit:
    """Recomputes stored keys where a stale one is most likely, and sweeps the whole table in bounded time.

    Each round checks: a uniform random sample; every key the correction path recomputed; keys rewritten since the
    last round (their versions); keys the price changes published since then reach; keys of the dates ticks
    committed since then; keys recorded absent since then; and the next stretch of a sweep over the whole table
    (sized so a pass takes `parity_sweep_hours`). A key that differs is checked again in the next round (a write may
    have been in flight); if it still differs, the mismatch is counted, logged, recorded for `embedder status`,
    queued for the correction path, and reported to `on_mismatch` (the live service reloads those instruments'
    windows from prices_daily: a window taken back in time would compute them wrong again).
    """

    settings: Settings
    metrics: StreamMetrics | None = None
    on_mismatch: Callable[[list[str]], None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    _corrected: list[MaintainedKey] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _since: datetime | None = None
    _suspects: list[MaintainedKey] = field(default_factory=list)
    seconds: float = 0.0
    """Time spent in rounds since start (the audit's share of the worker: seconds / uptime)."""

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

    def sources(self, conn: psycopg.Connection, since: datetime) -> list[tuple[str, list[MaintainedKey]]]:
        """Each source of this round and its keys (a key already taken by an earlier source is not repeated)."""
        with self._lock:
            corrected, self._corrected = self._corrected, []
        s = self.settings
        risk = s.parity_risk_keys
        out: list[tuple[str, list[MaintainedKey]]] = [
            ("sample", sample_keys(conn, s.parity_sample_keys)),
            ("correction", corrected),
            ("revised", keys_revised_since(conn, since, risk) if risk else []),
            ("changed", keys_of_changed_prices(conn, since, risk) if risk else []),
            ("ticks", keys_of_ticks_since(conn, since, risk) if risk else []),
            ("absent", keys_recorded_absent_since(conn, since, risk) if risk else []),
            ("sweep", sweep_keys(conn, sweep_share(conn, s.parity_audit_seconds, s.parity_sweep_hours))),
        ]
        seen: set = set()
        unique = []
        for source, keys in out:
            fresh = [k for k in keys if k.key not in seen]
            seen.update(k.key for k in fresh)
            unique.append((source, fresh))
        return unique

    def round(self, conn: psycopg.Connection) -> list[Finding]:
        """One audit round: last round's suspects checked again (what still differs is a confirmed mismatch:
        counted, logged, recorded, repaired), then every source's keys checked; what differs there is a
        suspect until the next round (a write may have been in flight). Returns the confirmed mismatches."""
        started = time.monotonic()
        now = one(conn.execute("SELECT now()"))[0]
        since = self._since or now - timedelta(seconds=2 * max(self.settings.parity_audit_seconds, 1.0))
        suspects, self._suspects = self._suspects, []
        confirmed: list[Finding] = []
        if suspects:
            confirmed, checked = check_keys(conn, suspects)
            self._record(conn, "confirm", checked, confirmed)
        for source, keys in self.sources(conn, since):
            if not keys:
                continue
            found, checked = check_keys(conn, keys)
            for f in found:
                log.info("parity audit (%s): %s %s as of %s differs; checking again next round", source, f.kind,
                         f.entity_id, f.as_of_date)  # fmt: skip
            self._suspects.extend(
                MaintainedKey(f.entity_id, f.as_of_date, f.model_id, f.window_days) for f in found if f.window_days
            )
            self._record(conn, source, checked, [])
        self._since = now
        if confirmed and self.settings.parity_repair:
            with conn.transaction():
                queue_recompute(conn, [(f.entity_id, f.as_of_date) for f in confirmed])
            if self.on_mismatch is not None:
                self.on_mismatch(sorted({f.entity_id for f in confirmed}))
        conn.execute(
            "DELETE FROM embedder_parity_audits WHERE checked_at < now() - make_interval(days => %s)", (KEEP_DAYS,)
        )
        self.seconds += time.monotonic() - started
        if self.metrics:
            self.metrics.parity_last_run.set(time.time())
        return confirmed

    def _record(self, conn: psycopg.Connection, source: str, checked: int, confirmed: list[Finding]) -> None:
        """Count, log and record one source's check (`confirm`: last round's suspects, and what they confirmed)."""
        if self.metrics:
            self.metrics.parity_checked.labels(source).inc(checked)
            for f in confirmed:
                self.metrics.parity_mismatches.labels(f.kind).inc()
        for f in confirmed[:20]:
            log.error(
                "parity audit: %s embedding %s as of %s (%s, window %s) differs from prices_daily (checked twice)",
                f.kind,
                f.entity_id,
                f.as_of_date,
                f.model_id,
                f.window_days,
            )
        conn.execute(
            """INSERT INTO embedder_parity_audits (source, keys_checked, mismatches, examples)
               VALUES (%s, %s, %s, %s)""",
            (source, checked, len(confirmed), Jsonb([f.as_dict() for f in confirmed[:5]])),
        )


def start_parity_audit(
    settings: Settings,
    ready: threading.Event | None = None,
    metrics: StreamMetrics | None = None,
    on_mismatch: Callable[[list[str]], None] | None = None,
) -> tuple[ParityAudit, threading.Thread]:
    """Run the audit in a daemon thread, its first round one period after `ready` is set."""
    audit = ParityAudit(settings, metrics, on_mismatch)
    if settings.parity_audit_seconds <= 0:
        audit.stop.set()
    return audit, start_when_ready("parity-audit", audit.run, audit.stop, ready)


def audit_summary(conn: psycopg.Connection, since: datetime) -> dict:
    """The worker's parity audit since a time: rounds, keys checked, mismatches, the newest examples."""
    rounds, checked, mismatched, last = one(
        conn.execute(
            """SELECT count(*), coalesce(sum(keys_checked), 0), coalesce(sum(mismatches), 0), max(checked_at)
           FROM embedder_parity_audits WHERE checked_at >= %s""",
            (since,),
        )
    )
    examples = conn.execute(
        """SELECT examples FROM embedder_parity_audits WHERE checked_at >= %s AND mismatches > 0
           ORDER BY checked_at DESC LIMIT 1""",
        (since,),
    ).fetchone()
    return {
        "since": since.isoformat(timespec="seconds"),
        "rounds": int(rounds),
        "keys_checked": int(checked),
        "mismatches": int(mismatched),
        "last_round": last.isoformat(timespec="seconds") if last else None,
        "examples": examples[0] if examples else [],
    }
