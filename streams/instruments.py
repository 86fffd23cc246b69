"""Which instrument ids exist (the `instruments` table): rows of unknown instruments are dead-lettered.

The worker keeps the ids it has seen in memory and asks PostgreSQL only about
new ones; while the database is unreachable it waits and retries rather than
dead-letter valid rows.
"""
from __future__ import annotations

import logging
import time

import psycopg

from shared.db import connect
from shared.errors import ServiceUnavailable

log = logging.getLogger("embedder.instruments")


class KnownInstruments:
    def __init__(self, database_url: str, max_backoff: float = 10.0):
        self.database_url = database_url
        self.max_backoff = max_backoff
        self._known: set[str] = set()
        self._conn: psycopg.Connection | None = None

    def missing(self, ids: set[str]) -> set[str]:
        """Ids not known without asking the database (cheap; call from the event loop)."""
        return ids - self._known

    def unknown(self, ids: set[str]) -> set[str]:
        """Ids of `ids` that are not in `instruments` (blocking: run it in a thread)."""
        missing = ids - self._known
        if not missing:
            return set()
        delay = 0.2
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.database_url, autocommit=True)
                found = {r[0] for r in self._conn.execute(
                    "SELECT instrument_id FROM instruments WHERE instrument_id = ANY(%s)", (list(missing),))}
                self._known |= found
                return missing - found
            except (psycopg.OperationalError, psycopg.InterfaceError, ServiceUnavailable) as e:
                log.warning("instrument lookup failed (%s); retrying in %.1fs", str(e).splitlines()[0], delay)
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
