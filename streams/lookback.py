"""A historical query's look-back, read from prices_daily into windows the processor computes from.

A query older than the live windows keep (`Tick.lookback_from_db`) used to be answered by
publishing every row of its look-back through Kafka into a run of its own: 62,000 rows for one
as_of over the S&P 500, which cost three times the batch path. The worker reads them itself
instead, with the batch path's reader (`shared.store.price_history`), one query per partition; the
processor then computes them as any tick (`PartitionProcessor.process(..., lookback=...)`).
These windows are never stored: a re-delivered query reads the database again.
"""

from __future__ import annotations

import threading
from datetime import date

import numpy as np
import psycopg

from shared.contract.encoder import lookback_start
from shared.store.db import PatientReader
from shared.store.price_history import History, read_histories
from shared.store.write_claims import read_claim
from streams.window import NO_OFFSET, NO_STAMP, ROW, Window, day_number


def window_of(history: History, horizon: int, claim: int = NO_STAMP) -> Window:
    """A window holding `history`, complete from day `horizon` on, read at `claim` (`shared.store.write_claims`)."""
    rows = np.empty(history.trade_dates.size, dtype=ROW)
    rows["day"] = history.trade_dates.astype(np.int64)
    rows["close"] = history.close
    rows["volume"] = history.volume
    return Window(NO_OFFSET, horizon, rows, claim)


class DbLookback:
    """Reads look-backs on its own connection (call `read` in a thread), riding out a database restart."""

    def __init__(self, database_url: str):
        self._reader = PatientReader(database_url, "reading a query's look-back")
        self._lock = threading.Lock()

    def read(self, instrument_ids: list[str], dates: tuple[date, ...], window_days: int) -> dict[str, Window]:
        """The windows of `instrument_ids` holding every row the `dates` need (absent: no row at all)."""
        if not instrument_ids:
            return {}
        first = lookback_start(np.datetime64(min(dates), "D"), window_days).astype(object)

        def claimed_read(conn: psycopg.Connection) -> tuple[int, dict[str, History]]:
            claim = read_claim(conn)  # before the prices: what they are at least as new as
            return claim, read_histories(conn, instrument_ids, first, max(dates))

        with self._lock:
            claim, histories = self._reader.read(claimed_read)
        horizon = day_number(first)
        return {i: window_of(h, horizon, claim) for i, h in histories.items()}
