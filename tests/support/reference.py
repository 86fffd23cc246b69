"""A plain-loop implementation of SPEC section 3, written independently of shared.contract.encoder.

Tests compare every path's bytes with this one.
"""

from __future__ import annotations

import math
import struct
from datetime import date, timedelta

CORE = {
    "num-regime-core-v1",
    "num-stab-core-v1",
    "num-profile-core-v1",
    "num-scenario-core-v1",
    "num-portfolio-core-v1",
}


def f32(x: float) -> float:
    """x rounded to float32 and back to float64."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def reference_embedding(
    rows: list[tuple[date, float, float]], as_of: date, window_days: int, model_id: str
) -> bytes | None:
    """rows: (trade_date, close, volume) of one instrument, any order. None = insufficient history."""
    n = window_days
    lo = as_of - timedelta(days=3 * n)
    window = sorted(r for r in rows if lo <= r[0] <= as_of)
    if len(window) < max(1, int(n * 0.87)):
        return None
    window = window[-min(len(window), n) :]
    closes = [float(r[1]) for r in window]
    volumes = [float(r[2]) for r in window]
    while len(closes) < n:
        closes.append(f32(window[-1][1]))
        volumes.append(f32(window[-1][2]))
    flat: list[float] = []
    for i in range(n):
        ret = 0.0 if i == 0 else math.log(closes[i] / closes[i - 1])
        flat.extend([closes[i], volumes[i], ret])
    if model_id in CORE:
        flat = (flat + [0.0] * 384)[:384]
    elif model_id != "numeric-simple-v1":
        raise ValueError(model_id)
    return struct.pack(f"<{len(flat)}f", *flat)
