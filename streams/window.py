"""A pure per-instrument window: add, correct or delete rows, view rows as of a date. No Faust here.

A window holds the source offset of the last event applied, the `horizon` day
before which rows were dropped, the stamp of the newest rows it took (where the relay read them:
`shared.store.write_claims`; a window never takes rows read before those it holds), and fixed-width rows
(day int32, close float64, volume float64) sorted by day. How the worker stores it (a head and sealed
chunks) is `streams/window_store.py`; `to_bytes`/`parse` and `upsert_rows` are a
single-value form for building and checking windows in tests.

The header makes replays of the source safe: after a crash or a rebalance the
table (restored from its changelog) can be ahead of the committed offsets, so a
re-delivered event whose offset is already applied is skipped, and a tick is
only computed from a window whose rows are complete back to its look-back.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

from shared.contract.encoder import LOOKBACK_FACTOR, retention_days

__all__ = ["Window", "day_number", "date_of", "retention_days", "upsert_row", "upsert_rows"]

ROW = np.dtype([("day", "<i4"), ("close", "<f8"), ("volume", "<f8")])
ROW_STRUCT = struct.Struct("<idd")  # one ROW, packed
ROW_DAY = struct.Struct("<i")  # the day of a packed ROW
HEADER = struct.Struct("<qiq")  # applied offset, horizon, stamp
EPOCH = np.datetime64("1970-01-01", "D")
NO_OFFSET = -1
NO_STAMP = -1
NOTHING_DROPPED = -(2**31)


EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def day_number(d: date) -> int:
    """Days since 1970-01-01 (the day column of a window, and numpy's datetime64[D] value)."""
    return d.toordinal() - EPOCH_ORDINAL


def date_of(day: int) -> date:
    """Inverse of `day_number`."""
    return date.fromordinal(int(day) + EPOCH_ORDINAL)


@dataclass(frozen=True, slots=True)
class Window:
    applied_offset: int
    horizon: int  # every row with day >= horizon is present
    rows: np.ndarray
    stamp: int = NO_STAMP
    """The stamp of the newest row batch applied (NO_STAMP: none carried one)."""

    @classmethod
    def parse(cls, state: bytes | None) -> Window:
        if not state:
            return cls(NO_OFFSET, NOTHING_DROPPED, np.empty(0, dtype=ROW))
        offset, horizon, stamp = HEADER.unpack_from(state)
        return cls(offset, horizon, np.frombuffer(state, dtype=ROW, offset=HEADER.size), stamp)

    def to_bytes(self) -> bytes:
        return HEADER.pack(self.applied_offset, self.horizon, self.stamp) + self.rows.tobytes()

    def newer_than(self, stamp: int | None) -> bool:
        """True when this window took rows read after `stamp` (rows of `stamp` would take it back in time)."""
        return stamp is not None and self.stamp > stamp

    def covers(self, as_of_day: int, window_days: int) -> bool:
        """True when every row of the look-back of `as_of_day` is still held."""
        return as_of_day - LOOKBACK_FACTOR * window_days >= self.horizon

    @property
    def days(self) -> np.ndarray:
        """The held trade days (int day numbers, ascending)."""
        return self.rows["day"]

    def apply(
        self,
        changes: Sequence[tuple[int, float | None, float | None]],
        keep_days: int,
        offset: int = NO_OFFSET,
        floor: int | None = None,
        stamp: int | None = None,
    ) -> tuple[Window, list[int]]:
        """The window with `changes` applied in order, and the indexes of changes it could not hold.

        A change is (day, close, volume), or (day, None, None) for a deleted row; where a day
        repeats, the last change wins. Rows older than the newest day minus `keep_days` are dropped
        and the horizon moves up (never down: a delete of the newest row leaves it), but never past
        `floor` (the first day a tick still waiting for its output needs). A change older than the
        resulting horizon is not applied: its index is returned, so the caller can say so. `stamp`: where
        the changes were read (the window keeps the newest).
        """
        stamp = self.stamp if stamp is None else max(stamp, self.stamp)
        appended = self._appended(changes, keep_days, offset, floor, stamp)
        if appended is not None:
            return appended
        last: dict[int, int] = {}
        for k, (day, _, _) in enumerate(changes):
            last[day] = k
        days = np.fromiter(last, dtype=np.int64, count=len(last))
        kept = self.rows[~np.isin(self.rows["day"], days)] if self.rows.size else self.rows
        upserts = [changes[k] for k in last.values() if changes[k][1] is not None]
        new = np.empty(len(upserts), dtype=ROW)
        if upserts:
            new["day"], new["close"], new["volume"] = zip(*upserts)
        merged = np.concatenate((kept, new))
        merged = merged[np.argsort(merged["day"], kind="stable")]
        horizon = self.horizon
        if merged.size:
            horizon = self._next_horizon(int(merged["day"][-1]), keep_days, floor)
        rows = merged[merged["day"] >= horizon]
        too_old = [k for k, (day, _, _) in enumerate(changes) if day < horizon]
        return Window(max(offset, self.applied_offset), horizon, rows, stamp), too_old

    def _next_horizon(self, newest: int, keep_days: int, floor: int | None) -> int:
        target = newest - keep_days if floor is None else min(newest - keep_days, floor)
        return max(self.horizon, target)

    def _appended(
        self,
        changes: Sequence[tuple[int, float | None, float | None]],
        keep_days: int,
        offset: int,
        floor: int | None,
        stamp: int,
    ) -> tuple[Window, list[int]] | None:
        """`apply` for the usual case, rows after the newest held day in ascending order (a replay's
        block, a live day); None when the changes are anything else."""
        if len(changes) == 1:  # a live day: one row per instrument
            day, close, volume = changes[0]
            if close is None:
                return None
            days = [int(day)]
            added = ROW_STRUCT.pack(days[0], close, volume)
        else:
            if not changes or any(c[1] is None for c in changes):
                return None
            days = [int(c[0]) for c in changes]
            if any(a >= b for a, b in zip(days, days[1:])):
                return None
            added = b"".join(ROW_STRUCT.pack(day, c[1], c[2]) for day, c in zip(days, changes))
        # Packed as bytes and read back: a third of the numpy calls of building a structured array, and the held
        # days read from the bytes, no numpy field view (this runs for every instrument of every live day).
        held = self.rows.tobytes()
        if held and days[0] <= ROW_DAY.unpack_from(held, len(held) - ROW.itemsize)[0]:
            return None
        horizon = self._next_horizon(days[-1], keep_days, floor)
        start = 0  # the rows the horizon passed: a day's move drops a row or two from the front
        while start < len(held) and ROW_DAY.unpack_from(held, start)[0] < horizon:
            start += ROW.itemsize
        merged = held[start:] + added if start < len(held) else added
        rows = np.frombuffer(merged, dtype=ROW)
        if start >= len(held) and days[0] < horizon:  # the horizon passed added rows too (never a live day's)
            rows = rows[int(rows["day"].searchsorted(horizon)) :]
        too_old = [k for k, day in enumerate(days) if day < horizon]
        return Window(max(offset, self.applied_offset), horizon, rows, stamp), too_old

    def holds(self, day: int) -> bool:
        """True when a row for `day` is held."""
        i = int(np.searchsorted(self.rows["day"], day))
        return i < self.rows.size and int(self.rows["day"][i]) == day

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(trade_dates datetime64[D], close, volume) for the encoder."""
        r = self.rows
        return r["day"].astype("datetime64[D]"), r["close"].astype(np.float64), r["volume"].astype(np.float64)


NO_ROWS = Window.parse(None)
"""The window of an instrument with no row at all."""


def upsert_rows(
    state: bytes | None,
    days: np.ndarray,
    closes: np.ndarray,
    volumes: np.ndarray,
    keep_days: int,
    offset: int = NO_OFFSET,
) -> bytes:
    """State with the rows added or replaced (`Window.apply` of upserts only)."""
    changes = list(
        zip(
            np.asarray(days).tolist(),
            np.asarray(closes, dtype=float).tolist(),
            np.asarray(volumes, dtype=float).tolist(),
        )
    )
    return Window.parse(state).apply(changes, keep_days, offset)[0].to_bytes()


def upsert_row(
    state: bytes | None, trade_date: date, close: float, volume: float, keep_days: int, offset: int = NO_OFFSET
) -> bytes:
    """`upsert_rows` for a single row."""
    return upsert_rows(
        state, np.array([day_number(trade_date)]), np.array([close]), np.array([volume]), keep_days, offset
    )
