"""Which instruments exist, and which a live tick covers: the `instruments` table as the stream needs it.

A live tick for market M (or for every market) emits for the instruments a
market selection takes (SPEC section 2: `asset_class = 'EQUITY'`, `status =
'ACTIVE'`), so the live table equals `replay --direct` over the same market.
The processor asks a `Registry` in memory only; the worker's `DbRegistry`
refreshes from PostgreSQL before a live tick and learns new ids before a row
batch, in a thread, retrying while the database is unreachable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import psycopg

from shared.broker.topics import partition_for
from shared.contract.messages import ALL_MARKETS
from shared.store.db import PatientReader
from shared.store.instruments import registry_fingerprint, registry_rows


@dataclass(frozen=True)
class InstrumentInfo:
    market_id: str | None
    selectable: bool
    """ACTIVE EQUITY: what a market selection takes."""


class Registry(Protocol):
    def unknown(self, ids: Iterable[str]) -> set[str]:
        """Ids not in `instruments`."""

    def in_scope(self, scope: str, partition: int) -> list[str]:
        """Selectable instruments of `scope` (a market, or `*`) whose rows go to `partition`, in the database's
        order."""

    def covers(self, instrument_id: str, scope: str) -> bool:
        """True when a live tick of `scope` emits for `instrument_id`."""

    def partition(self, instrument_id: str) -> int:
        """The prices partition of the instrument's rows."""

    def selection(self, market_id: str, limit: int | None, offset: int, partition: int) -> list[str]:
        """A market selection cut by offset/limit (SPEC section 2: in instrument_id order), the ids of
        it whose rows go to `partition`."""


class StaticRegistry:
    """A registry over a fixed map (tests, and each snapshot the database registry takes). The map's
    order is the database's `ORDER BY instrument_id` (`shared.store.instruments.registry_rows`): market cuts
    follow it, never Python's sort of the ids."""

    def __init__(self, infos: dict[str, InstrumentInfo], partitions: int, partition_of: dict[str, int] | None = None):
        self.infos = infos
        self.partitions = partitions
        self._partition_of = partition_of if partition_of is not None else {}
        self._scopes: dict[tuple[str, int], list[str]] | None = None

    def partition(self, instrument_id: str) -> int:
        p = self._partition_of.get(instrument_id)
        if p is None:
            p = self._partition_of[instrument_id] = partition_for(instrument_id, self.partitions)
        return p

    def unknown(self, ids: Iterable[str]) -> set[str]:
        return {i for i in ids if i not in self.infos}

    def in_scope(self, scope: str, partition: int) -> list[str]:
        if self._scopes is None:
            scopes: dict[tuple[str, int], list[str]] = {}
            for instrument_id in self.infos:
                info = self.infos[instrument_id]
                if info.selectable:
                    p = self.partition(instrument_id)
                    scopes.setdefault((ALL_MARKETS, p), []).append(instrument_id)
                    scopes.setdefault((info.market_id or "", p), []).append(instrument_id)
            self._scopes = scopes
        return self._scopes.get((scope, partition), [])

    def covers(self, instrument_id: str, scope: str) -> bool:
        info = self.infos.get(instrument_id)
        return info is not None and info.selectable and (scope == ALL_MARKETS or info.market_id == scope)

    def selection(self, market_id: str, limit: int | None, offset: int, partition: int) -> list[str]:
        market = [i for i, info in self.infos.items() if info.selectable and info.market_id == market_id]
        cut = market[offset:] if limit is None else market[offset : offset + limit]
        return [i for i in cut if self.partition(i) == partition]


class DbRegistry:
    """The `instruments` table, snapshotted; `refresh` and `learn` do I/O (call them in a thread)."""

    def __init__(self, database_url: str, partitions: int, max_backoff: float = 10.0):
        self.database_url = database_url
        self.partitions = partitions
        self.max_backoff = max_backoff
        self._partition_of: dict[str, int] = {}
        self.snapshot = StaticRegistry({}, partitions, self._partition_of)
        self._refreshed_for: object = None
        self._fingerprint: tuple | None = None
        self.reloads = 0
        """How many times every instrument was read (tests; a tick on an unchanged table reads none)."""
        self._reader = PatientReader(database_url, "instrument lookup", max_backoff)
        self._lock = threading.Lock()

    # the Registry protocol, answered from the snapshot (no I/O)
    def unknown(self, ids: Iterable[str]) -> set[str]:
        return self.snapshot.unknown(ids)

    def in_scope(self, scope: str, partition: int) -> list[str]:
        return self.snapshot.in_scope(scope, partition)

    def covers(self, instrument_id: str, scope: str) -> bool:
        return self.snapshot.covers(instrument_id, scope)

    def selection(self, market_id: str, limit: int | None, offset: int, partition: int) -> list[str]:
        return self.snapshot.selection(market_id, limit, offset, partition)

    def partition(self, instrument_id: str) -> int:
        return self.snapshot.partition(instrument_id)

    def refresh(self, token: object = None) -> None:
        """Bring the snapshot up to date with `instruments`; with `token`, only once per token (one live
        tick reaches every partition, and the instruments need reading once for all of them). Every
        instrument is read again only when the table's fingerprint changed (the usual tick reads one row)."""
        with self._lock:
            if token is not None and token == self._refreshed_for:
                return
            fingerprint = self._query(lambda conn, _: [registry_fingerprint(conn)], None)[0]
            if fingerprint != self._fingerprint:
                rows = self._query(registry_rows, None)
                self.snapshot = StaticRegistry(
                    {i: InstrumentInfo(m, s) for i, m, s in rows}, self.partitions, self._partition_of
                )
                self._fingerprint = fingerprint
                self.reloads += 1
            self._refreshed_for = token

    def learn(self, ids: set[str]) -> None:
        """Make sure the snapshot knows every id of `ids` that exists (asks only about new ones)."""
        with self._lock:
            missing = self.snapshot.unknown(ids)
            if not missing:
                return
            rows = self._query(registry_rows, list(missing))
            if rows:  # new ids join the snapshot in the database's order
                infos = {i: InstrumentInfo(m, s) for i, m, s in self._query(registry_rows, None)}
                self.snapshot = StaticRegistry(infos, self.partitions, self._partition_of)

    def _query(
        self, read: Callable[[psycopg.Connection, list[str] | None], list[tuple]], ids: list[str] | None
    ) -> list[tuple]:
        return self._reader.read(lambda conn: read(conn, ids))
