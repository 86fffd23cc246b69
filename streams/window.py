"""A pure per-instrument window: add or correct a row, view rows as of a date. No Faust here.

The state is compact fixed-width bytes (day int32, close float64, volume
float64 per row, sorted by day), so a table value stays small and every
change is a reassignment that reaches the changelog.
"""
from __future__ import annotations

from datetime import date

import numpy as np

from shared.encoder import LOOKBACK_FACTOR

ROW = np.dtype([("day", "<i4"), ("close", "<f8"), ("volume", "<f8")])
EPOCH = np.datetime64("1970-01-01", "D")


def day_number(d: date) -> int:
    return int((np.datetime64(d, "D") - EPOCH).astype(np.int64))


def date_of(day: int) -> date:
    """Inverse of `day_number`."""
    return (EPOCH + np.timedelta64(day, "D")).astype(object)


def rows_of(state: bytes | None) -> np.ndarray:
    """The rows of a stored state (empty when there is none)."""
    if not state:
        return np.empty(0, dtype=ROW)
    return np.frombuffer(state, dtype=ROW)


def upsert_row(state: bytes | None, trade_date: date, close: float, volume: float, keep_days: int) -> bytes:
    """State with the row for `trade_date` added or replaced; rows older than the
    newest day minus `keep_days` calendar days are dropped."""
    rows = rows_of(state)
    day = day_number(trade_date)
    i = int(np.searchsorted(rows["day"], day))
    new = np.empty(1, dtype=ROW)
    new[0] = (day, close, volume)
    if i < rows.size and rows["day"][i] == day:
        rows = rows.copy()
        rows[i] = new[0]
    else:
        rows = np.concatenate((rows[:i], new, rows[i:]))
    horizon = int(rows["day"][-1]) - keep_days
    return rows[rows["day"] >= horizon].tobytes()


def retention_days(window_days: int, slack_days: int) -> int:
    """Calendar days of rows to keep: one look-back plus room for late rows and corrections."""
    return LOOKBACK_FACTOR * window_days + slack_days


def arrays(state: bytes | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(trade_dates datetime64[D], close, volume) for the encoder."""
    rows = rows_of(state)
    return rows["day"].astype("datetime64[D]"), rows["close"].astype(np.float64), rows["volume"].astype(np.float64)
