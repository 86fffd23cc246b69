"""The versions of one embedding, when each was current, why it changed, and how far it moved; the
history switch and its retention.

Versions are kept by the triggers of migration 0012 (`numeric_window_embedding_versions`): each row
is a superseded vector with the interval it was current and the cause of the change that ended it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import psycopg

from shared.contract.errors import BadArguments
from shared.store.db import one
from shared.store.embedding_store import ENTITY_TYPE, current_row

CAUSE_KINDS = frozenset({"live", "correction", "replay", "query", "direct", "repair", "sql"})
"""Why embeddings change (`shared.store.embedding_store.set_cause`; "sql" for writers outside the project)."""


@dataclass(frozen=True)
class Version:
    """One vector an embedding key held: current from `recorded_from` to `recorded_to` (None: still
    current). `ended_by` is the change that ended it ("update", "delete", "truncate") and its cause."""

    recorded_from: datetime
    recorded_to: datetime | None
    window_days: int | None
    vector: bytes | None
    ended_by: str | None = None
    cause: str | None = None

    @property
    def values(self) -> np.ndarray | None:
        return None if self.vector is None else np.frombuffer(self.vector, dtype="<f4")


@dataclass(frozen=True)
class Drift:
    """How far a vector moved to the next: the largest absolute difference and the cosine similarity."""

    max_abs: float
    cosine: float | None


def drift(before: np.ndarray | None, after: np.ndarray | None) -> Drift | None:
    """None where either side has no vector or the lengths differ (another window)."""
    if before is None or after is None or before.shape != after.shape:
        return None
    a, b = before.astype(np.float64), after.astype(np.float64)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return Drift(float(np.max(np.abs(a - b))) if a.size else 0.0, float(a @ b / norms) if norms else None)


def versions_of(conn: psycopg.Connection, instrument_id: str, as_of: date, model_id: str) -> list[Version]:
    """Every version of one key, oldest first, the current row (if any) last."""
    rows = conn.execute(
        """SELECT recorded_from, recorded_to, (window_spec->>'window_days')::int, vector, change, cause
           FROM numeric_window_embedding_versions
           WHERE entity_type = %s AND entity_id = %s AND as_of_date = %s AND model_id = %s AND change <> 'absent'
           ORDER BY recorded_to, version_id""",
        (ENTITY_TYPE, instrument_id, as_of, model_id),
    ).fetchall()
    out = [Version(f, t, w, bytes(v) if v is not None else None, c, why) for f, t, w, v, c, why in rows]
    current = current_row(conn, instrument_id, as_of, model_id)
    if current is not None:
        since = max([current[0]] + [v.recorded_to for v in out if v.recorded_to is not None])
        out.append(Version(since, None, current[1], bytes(current[2]) if current[2] is not None else None))
    return out


@dataclass(frozen=True)
class HistoryState:
    enabled: bool
    complete_since: datetime
    changed_at: datetime
    changed_by: str | None
    versions: int


def history_state(conn: psycopg.Connection) -> HistoryState:
    enabled, since, changed_at, by = one(
        conn.execute("SELECT enabled, complete_since, changed_at, changed_by FROM embedder_history")
    )
    versions = one(conn.execute("SELECT count(*) FROM numeric_window_embedding_versions"))[0]
    return HistoryState(enabled, since, changed_at, by, versions)


def switch_history(conn: psycopg.Connection, on: bool, by: str) -> HistoryState:
    """Turn version keeping on (complete from now on) or off (reads as known at an instant are refused
    until it is on again); the caller commits."""
    conn.execute(
        """UPDATE embedder_history SET enabled = %s, changed_at = now(), changed_by = %s,
                  complete_since = CASE WHEN %s AND NOT enabled THEN now() ELSE complete_since END""",
        (on, by, on),
    )
    return history_state(conn)


def prune_versions(conn: psycopg.Connection, keep_days: float) -> int:
    """Delete versions that stopped being current more than `keep_days` ago; reads as known at an instant
    are then exact from that horizon on (`complete_since` moves up to it). Returns how many went."""
    deleted = conn.execute(
        """DELETE FROM numeric_window_embedding_versions
           WHERE recorded_to < now() - make_interval(secs => %s)""",
        (keep_days * 86400,),
    ).rowcount
    conn.execute(
        """UPDATE embedder_history SET complete_since = greatest(complete_since,
                                                                           now() - make_interval(secs => %s))""",
        (keep_days * 86400,),
    )
    return deleted


def revisions_by_day(conn: psycopg.Connection, days: int = 7) -> list[tuple[date, str, int]]:
    """(UTC day, cause kind, versions kept) over the last `days` days, newest day first."""
    return conn.execute(
        """SELECT (recorded_to AT TIME ZONE 'UTC')::date, cause_kind, count(*)
           FROM numeric_window_embedding_versions
           WHERE recorded_to >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                                - make_interval(days => %s - 1) AND change <> 'absent'
           GROUP BY 1, 2 ORDER BY 1 DESC, 2""",
        (days,),
    ).fetchall()


def revisions_today(conn: psycopg.Connection) -> dict[str, int]:
    """Versions kept since midnight UTC, by cause kind (the `embedder_embeddings_revised_today` gauge)."""
    return dict(
        conn.execute(
            """SELECT cause_kind, count(*) FROM numeric_window_embedding_versions
           WHERE recorded_to >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AND change <> 'absent'
           GROUP BY 1"""
        ).fetchall()
    )


def check_known_at(conn: psycopg.Connection, when: datetime) -> None:
    """Refuse an instant the versions kept cannot answer exactly (history off, or pruned before it)."""
    row = conn.execute("SELECT enabled, complete_since, changed_at FROM embedder_history").fetchone()
    if row is None or not row[0]:
        since = f" since {row[2].isoformat(timespec='seconds')}" if row else ""
        raise BadArguments(
            f"embedding history is off{since} (`embedder embeddings keep-history --on`): no read as known at an instant"
        )
    if when < row[1]:
        raise BadArguments(
            f"known_at {when.isoformat(timespec='seconds')} is before the history kept, which "
            f"is complete from {row[1].isoformat(timespec='seconds')}"
        )
