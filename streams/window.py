"""A pure per-instrument window: add or correct a row, view rows as of a date. No Faust here.

The state is compact bytes: a 12-byte header (the source offset of the last
event applied, and the `horizon` day before which rows were dropped) followed
by fixed-width rows (day int32, close float64, volume float64) sorted by day.
Every change is a reassignment, so it reaches the changelog.

The header makes replays of the source safe: after a crash or a rebalance the
table (restored from its changelog) can be ahead of the committed offsets, so a
re-delivered event whose offset is already applied is skipped, and a tick is
only computed from a window whose rows are complete back to its look-back.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import date

import numpy as np

from shared.encoder import LOOKBACK_FACTOR

ROW = np.dtype([("day", "<i4"), ("close", "<f8"), ("volume", "<f8")])
HEADER = struct.Struct("<qi")
EPOCH = np.datetime64("1970-01-01", "D")
NO_OFFSET = -1
NOTHING_DROPPED = -(2**31)


def day_number(d: date) -> int:
    return int((np.datetime64(d, "D") - EPOCH).astype(np.int64))


def date_of(day: int) -> date:
    """Inverse of `day_number`."""
    return (EPOCH + np.timedelta64(day, "D")).astype(object)


@dataclass(frozen=True)
class Window:
    applied_offset: int
    horizon: int  # every row with day >= horizon is present
    rows: np.ndarray

    @classmethod
    def parse(cls, state: bytes | None) -> "Window":
        if not state:
            return cls(NO_OFFSET, NOTHING_DROPPED, np.empty(0, dtype=ROW))
        offset, horizon = HEADER.unpack_from(state)
        return cls(offset, horizon, np.frombuffer(state, dtype=ROW, offset=HEADER.size))

    def to_bytes(self) -> bytes:
        return HEADER.pack(self.applied_offset, self.horizon) + self.rows.tobytes()

    def covers(self, as_of_day: int, window_days: int) -> bool:
        """True when every row of the look-back of `as_of_day` is still held."""
        return as_of_day - LOOKBACK_FACTOR * window_days >= self.horizon

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(trade_dates datetime64[D], close, volume) for the encoder."""
        r = self.rows
        return r["day"].astype("datetime64[D]"), r["close"].astype(np.float64), r["volume"].astype(np.float64)


def upsert_rows(state: bytes | None, days: np.ndarray, closes: np.ndarray, volumes: np.ndarray, keep_days: int,
                offset: int = NO_OFFSET) -> bytes:
    """State with the rows added or replaced (where `days` repeats a day, the later row wins); rows
    older than the newest day minus `keep_days` calendar days are dropped (and the horizon moves up)."""
    window = Window.parse(state)
    new = np.empty(len(days), dtype=ROW)
    new["day"], new["close"], new["volume"] = days, closes, volumes
    # Stable sort of old rows then new ones; keep the last row of each day.
    merged = np.concatenate((window.rows, new))
    order = np.argsort(merged["day"], kind="stable")
    merged = merged[order]
    last_of_day = np.append(merged["day"][1:] != merged["day"][:-1], True)
    rows = merged[last_of_day]
    horizon = max(window.horizon, int(rows["day"][-1]) - keep_days)
    rows = rows[rows["day"] >= horizon]
    return Window(max(offset, window.applied_offset), horizon, rows).to_bytes()


def upsert_row(state: bytes | None, trade_date: date, close: float, volume: float, keep_days: int,
               offset: int = NO_OFFSET) -> bytes:
    """`upsert_rows` for a single row."""
    return upsert_rows(state, np.array([day_number(trade_date)]), np.array([close]), np.array([volume]),
                       keep_days, offset)


def retention_days(window_days: int, slack_days: int) -> int:
    """Calendar days of rows to keep: one look-back plus room for late rows and corrections."""
    return LOOKBACK_FACTOR * window_days + slack_days
