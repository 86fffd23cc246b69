"""Reading price CSV files of the three layouts SPEC section 5 names, with row validation.

Columns are matched by header name in any order, so the Yahoo layout
(`Date,High,Low,Open,Close,Volume,Adj Close,Name`), the Kaggle layout
(`date,open,high,low,close,volume,Name`) and the project's own `prices_daily`
layout all read through the same code.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO

from shared.errors import BadArguments
from shared.validation import latest_trade_date, row_problem

# Normalised header name -> canonical field.
ALIASES: dict[str, str] = {
    "date": "trade_date",
    "trade_date": "trade_date",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "adj_close": "adjusted_close",
    "adjclose": "adjusted_close",
    "adjusted_close": "adjusted_close",
    "volume": "volume",
    "name": "symbol",
    "symbol": "symbol",
    "ticker": "symbol",
    "instrument_id": "instrument_id",
    "currency": "currency",
    "metadata": "metadata",
}
REQUIRED = ("trade_date", "open", "high", "low", "close", "volume")
NUMERIC = ("open", "high", "low", "close", "adjusted_close", "volume")


@dataclass(frozen=True)
class PriceRow:
    """One validated row; `key` is a symbol, or an instrument_id when `key_is_id`."""

    key: str
    key_is_id: bool
    trade_date: date
    open: float
    high: float
    low: float
    close: float
    adjusted_close: float
    volume: float
    currency: str
    metadata: str | None


@dataclass
class ReadReport:
    """What one file gave: valid rows counted, rejected rows counted by reason."""

    path: Path
    rows: int = 0
    valid: int = 0
    rejected: Counter = field(default_factory=Counter)


def _normalise(header: str) -> str:
    return header.strip().lower().replace(" ", "_").replace("-", "_")


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def symbol_from_filename(path: Path) -> str:
    """`AAPL.csv.gz` or `aapl_data.csv` -> the symbol a per-ticker download is named after."""
    name = path.name
    for suffix in (".gz", ".csv", ".txt"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    for tail in ("_data", "-data", "_prices", "-prices"):
        if name.lower().endswith(tail):
            name = name[: -len(tail)]
    return name.upper() if name.islower() else name


def column_map(headers: list[str], path: Path) -> dict[str, int]:
    """Canonical field -> column index; BadArguments when a required column is missing."""
    mapping: dict[str, int] = {}
    for i, h in enumerate(headers):
        canonical = ALIASES.get(_normalise(h))
        if canonical and canonical not in mapping:
            mapping[canonical] = i
    missing = [c for c in REQUIRED if c not in mapping]
    if missing:
        raise BadArguments(f"{path}: no column for {', '.join(missing)} (header: {','.join(headers)})")
    return mapping


def _parse_date(text: str) -> date:
    text = text.strip()
    return date.fromisoformat(text[:10])


def read_price_file(path: Path, currency: str, report: ReadReport) -> Iterator[PriceRow]:
    """Yield the valid rows of one file in file order, counting rejects in `report`."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        try:
            headers = next(reader)
        except StopIteration:
            return
        cols = column_map(headers, path)
        id_col = cols.get("instrument_id", cols.get("symbol"))
        key_is_id = "instrument_id" in cols
        default_key = None if id_col is not None else symbol_from_filename(path)
        width = len(headers)
        latest = latest_trade_date()
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            report.rows += 1
            reason, row = _validate(record, width, cols, id_col, key_is_id, default_key, currency, latest)
            if reason:
                report.rejected[reason] += 1
                continue
            report.valid += 1
            yield row


def _validate(
    record: list[str],
    width: int,
    cols: dict[str, int],
    id_col: int | None,
    key_is_id: bool,
    default_key: str | None,
    currency: str,
    latest: date,
) -> tuple[str | None, PriceRow | None]:
    """(reason, None) for a rejected record, else (None, row). Parsing problems are this reader's;
    whether a parsed row is usable is `shared.validation.row_problem`, the rule the stream applies too."""
    if len(record) < width:
        return "missing value", None
    key = record[id_col].strip() if id_col is not None else default_key
    if not key:
        return "missing symbol", None
    try:
        trade_date = _parse_date(record[cols["trade_date"]])
    except ValueError:
        return "bad date", None
    values: dict[str, float] = {}
    for name in NUMERIC:
        i = cols.get(name)
        if i is None:
            continue
        text = record[i].strip()
        if not text:
            return "missing value", None
        try:
            value = float(text)
        except ValueError:
            return "non-numeric value", None
        if not math.isfinite(value):
            return "non-finite value", None
        values[name] = value
    problem = row_problem(key, trade_date, values["close"], values["volume"], latest)
    if problem:
        return problem, None
    row_currency = currency
    if "currency" in cols and record[cols["currency"]].strip():
        row_currency = record[cols["currency"]].strip()
    metadata = None
    if "metadata" in cols and record[cols["metadata"]].strip():
        metadata = record[cols["metadata"]].strip()
        try:
            json.loads(metadata)
        except ValueError:
            return "metadata is not JSON", None
    return None, PriceRow(
        key=key,
        key_is_id=key_is_id,
        trade_date=trade_date,
        open=values["open"],
        high=values["high"],
        low=values["low"],
        close=values["close"],
        adjusted_close=values.get("adjusted_close", values["close"]),
        volume=values["volume"],
        currency=row_currency,
        metadata=metadata,
    )
