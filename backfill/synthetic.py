"""A realistic synthetic market, for demos and tests where the real data set is absent.

Geometric Brownian motion closes on business days, with the quirks of real
data: gaps, short and late-starting histories, delistings and zero volumes.
Deterministic for a seed.
"""

from __future__ import annotations

import csv
import gzip
from datetime import date
from pathlib import Path

import numpy as np

YAHOO_HEADER = ["Date", "High", "Low", "Open", "Close", "Volume", "Adj Close", "Name"]


def business_days(start: date, end: date) -> np.ndarray:
    """Mon-Fri dates from start to end inclusive, as datetime64[D]."""
    days = np.arange(np.datetime64(start, "D"), np.datetime64(end, "D") + 1)
    return days[np.is_busday(days)]


LONG_ID_TAIL = ".ISIN-US0000000000-XNYS-CLASS-A-PREFERRED-SERIES-B"


def synthetic_rows(instruments: int, start: date, end: date, seed: int = 7, long_ids: bool = False) -> list[list[str]]:
    """Yahoo-layout rows (strings) for `instruments` symbols SYN000.. over start..end; with `long_ids`,
    ids of every length from 8 to 50 characters (the schema's limit): SYN00042.ISIN-…"""
    rng = np.random.default_rng(seed)
    days = business_days(start, end)
    rows: list[list[str]] = []
    for k in range(instruments):
        symbol = f"SYN{k:05d}{LONG_ID_TAIL[: k % 43]}" if long_ids else f"SYN{k:03d}"
        keep = rng.random(days.size) > 0.02  # ~2 % missing days
        kind = k % 10
        if kind == 3:  # late listing
            keep[: rng.integers(days.size // 4, days.size // 2)] = False
        elif kind == 5:  # delisted early
            keep[rng.integers(days.size // 2, days.size - 10) :] = False
        elif kind == 7:  # only a handful of rows
            keep[:] = False
            keep[rng.choice(days.size, size=min(12, days.size), replace=False)] = True
        picked = days[keep]
        if picked.size == 0:
            continue
        returns = rng.normal(0.0003, 0.018, picked.size)
        close = 20.0 + 180.0 * rng.random()
        closes = close * np.exp(np.cumsum(returns))
        volume = np.round(rng.lognormal(14.0, 0.6, picked.size))
        volume[rng.random(picked.size) < 0.01] = 0.0
        spread = np.abs(rng.normal(0, 0.01, picked.size)) * closes
        for d, c, v, s in zip(picked.tolist(), closes, volume, spread):
            o = c + rng.normal(0, 0.3) * s
            rows.append(
                [
                    d.isoformat(),
                    repr(float(max(c, o) + s)),
                    repr(float(min(c, o) - s)),
                    repr(float(o)),
                    repr(float(c)),
                    repr(float(v)),
                    repr(float(c)),
                    symbol,
                ]
            )
    rows.sort(key=lambda r: (r[0], r[7]))
    return rows


def write_synthetic_csv(path: Path, instruments: int, start: date, end: date, seed: int = 7) -> int:
    """Write a Yahoo-layout `.csv.gz` (or `.csv`) file; returns the number of data rows."""
    rows = synthetic_rows(instruments, start, end, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(YAHOO_HEADER)
        writer.writerows(rows)
    return len(rows)
