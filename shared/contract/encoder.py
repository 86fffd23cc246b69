"""SPEC section 3, exactly: the one embedding function every path (batch and stream) calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.contract.models import ModelSpec

LOOKBACK_FACTOR = 3
MIN_HISTORY_FRACTION = 0.87
FEATURES = 3


def min_rows(window_days: int) -> int:
    """Fewest rows in the look-back for an embedding to exist."""
    return max(1, int(window_days * MIN_HISTORY_FRACTION))


def retention_days(window_days: int, slack_days: int) -> int:
    """Calendar days of rows the stream keeps per instrument: one look-back plus room for late rows
    and corrections (the live bootstrap loads exactly this much)."""
    return LOOKBACK_FACTOR * window_days + slack_days


def lookback_start(as_of: Any, window_days: int) -> Any:
    """First calendar day whose rows count for `as_of` (datetime64[D] arithmetic; an array or a scalar)."""
    return as_of - np.timedelta64(LOOKBACK_FACTOR * window_days, "D")


@dataclass(frozen=True)
class WindowBatch:
    """Flat window vectors (float32, 3*N per row) for the as_of dates that had enough history."""

    as_of: np.ndarray  # datetime64[D], shape (k,)
    flat: np.ndarray  # float32, shape (k, 3*N)
    insufficient: int  # as_of dates skipped for insufficient history


def encode_windows(
    trade_dates: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    as_of_dates: np.ndarray,
    window_days: int,
) -> WindowBatch:
    """The day-major float32 window vectors of one instrument at each as_of date.

    `trade_dates` must be sorted ascending and unique (one instrument's rows);
    `as_of_dates` may be in any order. All as_of dates are computed in one
    vectorised pass, so the batch path and a single stream tick share this code.
    """
    n = int(window_days)
    d = np.asarray(trade_dates, dtype="datetime64[D]")
    c = np.asarray(close, dtype=np.float64)
    v = np.asarray(volume, dtype=np.float64)
    a = np.asarray(as_of_dates, dtype="datetime64[D]")
    hi = np.searchsorted(d, a, side="right")
    lo = np.searchsorted(d, lookback_start(a, n), side="left")
    count = hi - lo
    ok = count >= min_rows(n)
    a, hi, count = a[ok], hi[ok], count[ok]
    insufficient = int((~ok).sum())
    if a.size == 0:
        return WindowBatch(a, np.empty((0, FEATURES * n), dtype=np.float32), insufficient)

    kept = np.minimum(count, n)
    pos = np.arange(n)[None, :]
    first = (hi - kept)[:, None]
    padded = pos >= kept[:, None]
    idx = np.where(padded, (hi - 1)[:, None], first + pos)
    closes = c[idx]
    volumes = v[idx]
    if padded.any():
        last = hi - 1
        pad_close = np.broadcast_to(c[last].astype(np.float32).astype(np.float64)[:, None], closes.shape)
        pad_volume = np.broadcast_to(v[last].astype(np.float32).astype(np.float64)[:, None], volumes.shape)
        closes = np.where(padded, pad_close, closes)
        volumes = np.where(padded, pad_volume, volumes)
    returns = np.zeros_like(closes)
    returns[:, 1:] = np.log(closes[:, 1:] / closes[:, :-1])
    stacked = np.stack((closes, volumes, returns), axis=2).astype(np.float32)
    return WindowBatch(a, stacked.reshape(a.size, FEATURES * n), insufficient)


def apply_model(flat: np.ndarray, model: ModelSpec) -> np.ndarray:
    """Cut or zero-pad flat window vectors (k, 3N) to the model's stored shape, float32."""
    flat = np.asarray(flat, dtype=np.float32)
    if model.dimension is None:
        return flat
    width = flat.shape[1]
    if width >= model.dimension:
        return np.ascontiguousarray(flat[:, : model.dimension])
    out = np.zeros((flat.shape[0], model.dimension), dtype=np.float32)
    out[:, :width] = flat
    return out


def to_bytes(vector: np.ndarray) -> bytes:
    """The stored form of one vector: little-endian float32."""
    return np.asarray(vector, dtype="<f4").tobytes()


def embed(
    trade_dates: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    as_of: np.datetime64,
    window_days: int,
    model: ModelSpec,
) -> np.ndarray | None:
    """One instrument's embedding at one as_of date, or None for insufficient history."""
    batch = encode_windows(trade_dates, close, volume, np.array([as_of], dtype="datetime64[D]"), window_days)
    if batch.as_of.size == 0:
        return None
    return apply_model(batch.flat, model)[0]
