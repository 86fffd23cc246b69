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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO

from shared.contract.errors import BadArguments
from shared.contract.validation import date_problem, id_problem, latest_trade_date, row_problem

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


Record = tuple  # (key, key_is_id, trade_date, open, high, low, close, adjusted_close, volume, currency, metadata)


def read_price_file(path: Path, currency: str, report: ReadReport) -> Iterator[PriceRow]:
    """Yield the valid rows of one file in file order, counting rejects in `report`."""
    for record in read_price_records(path, currency, report):
        yield PriceRow(*record)


@dataclass(frozen=True)
class FileSpec:
    """How to read the records of one file (from its header): picklable, for parse processes."""

    width: int
    cols: dict[str, int]
    id_col: int | None
    key_is_id: bool
    default_key: str | None
    currency: str
    latest: date

    @property
    def exact_only(self) -> bool:
        """Metadata JSON to check on every row: the exact path only."""
        return "metadata" in self.cols


def open_price_file(path: Path, currency: str) -> tuple[FileSpec | None, IO[str]]:
    """The file's spec (None when it is empty) and its text positioned after the header."""
    f = _open_text(path)
    try:
        header_line = f.readline()
        headers = next(csv.reader([header_line]), None) if header_line else None
        if not headers:
            return None, f
        cols = column_map(headers, path)
        id_col = cols.get("instrument_id", cols.get("symbol"))
        spec = FileSpec(
            len(headers),
            cols,
            id_col,
            "instrument_id" in cols,
            None if id_col is not None else symbol_from_filename(path),
            currency,
            latest_trade_date(),
        )
        return spec, f
    except BaseException:
        f.close()
        raise


def read_price_records(path: Path, currency: str, report: ReadReport) -> Iterator[Record]:
    """The valid rows of one file as plain tuples in PriceRow's field order (what the import stages)."""
    spec, f = open_price_file(path, currency)
    with f:
        if spec is not None:
            yield from records(f, spec, report)


def records(lines: Iterable[str], spec: FileSpec, report: ReadReport) -> Iterator[Record]:
    """The valid rows among `lines` (CSV text after the header), counting rejects in `report`.

    The usual row takes a fast path: keys and dates are judged once per distinct value (a file repeats
    them), numbers are parsed once. A row the fast path does not accept as it is goes through
    `_validate`, which gives the exact reason, so both paths accept and refuse the same rows."""
    for row, _ in records_with_text(lines, spec, report):
        yield row


def records_with_text(lines: Iterable[str], spec: FileSpec, report: ReadReport) -> Iterator[tuple[Record, str | None]]:
    """`records`, each with the text of its six numbers as the file has them, joined by commas (open,
    high, low, close, adjusted_close, volume), where the fast path read them, else None."""
    reader = csv.reader(lines)
    args = (spec.width, spec.cols, spec.id_col, spec.key_is_id, spec.default_key, spec.currency, spec.latest)
    if not spec.exact_only:
        yield from _fast_records(reader, report, args)
        return
    for record in reader:
        if not record or (len(record) == 1 and not record[0].strip()):
            continue
        report.rows += 1
        reason, row = _validate(record, *args)
        if reason:
            report.rejected[reason] += 1
            continue
        report.valid += 1
        assert row is not None  # no reason: a row
        yield astuple_row(row), None


def text_blocks(f: IO[str], size: int) -> Iterator[str]:
    """The rest of `f` in blocks of about `size` characters, each cut at a record boundary: after a
    newline preceded by an even number of quote characters (a quoted field may span lines)."""
    carry = ""
    while True:
        text = f.read(size)
        if not text:
            if carry:
                yield carry
            return
        block = carry + text
        cut = block.rfind("\n")
        while cut >= 0 and block.count('"', 0, cut) % 2:
            cut = block.rfind("\n", 0, cut)
        if cut < 0:
            carry = block
            continue
        yield block[: cut + 1]
        carry = block[cut + 1 :]


def astuple_row(row: PriceRow) -> Record:
    return (
        row.key,
        row.key_is_id,
        row.trade_date,
        row.open,
        row.high,
        row.low,
        row.close,
        row.adjusted_close,
        row.volume,
        row.currency,
        row.metadata,
    )


def _fast_records(reader: Iterator[list[str]], report: ReadReport, args: tuple) -> Iterator[tuple[Record, str | None]]:
    width, cols, id_col, key_is_id, default_key, currency, latest = args
    date_col = cols["trade_date"]
    o_col, h_col, l_col, c_col, v_col = cols["open"], cols["high"], cols["low"], cols["close"], cols["volume"]
    a_col = cols.get("adjusted_close", c_col)
    cur_col = cols.get("currency")
    good_keys: dict[str, str | None] = {}  # raw key text -> the stripped key, or None when it is refused
    good_dates: dict[str, date | None] = {}  # raw date text -> the date, or None when it is refused
    finite = math.isfinite
    rows = valid = 0
    try:
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            rows += 1
            try:
                if len(record) < width:
                    raise ValueError
                raw_key = record[id_col] if id_col is not None else default_key
                key = good_keys.get(raw_key, "")
                if key == "":
                    key = good_keys[raw_key] = _good_key(raw_key, id_col is not None)
                raw_date = record[date_col]
                day = good_dates.get(raw_date, False)
                if day is False:
                    day = good_dates[raw_date] = _good_date(raw_date, latest)
                o, h, lo, c, v = (
                    float(record[o_col]),
                    float(record[h_col]),
                    float(record[l_col]),
                    float(record[c_col]),
                    float(record[v_col]),
                )
                a = float(record[a_col])
                # A sum is finite only if every term is (a finite sum that overflows sends the row to
                # the exact path, which accepts it).
                if key is None or day is None or not (c > 0 and v >= 0 and finite(o + h + lo + c + v + a)):
                    raise ValueError
            except ValueError:
                reason, row = _validate(record, *args)
                if reason:
                    report.rejected[reason] += 1
                    continue
                valid += 1
                assert row is not None  # no reason: a row
                yield astuple_row(row), None
                continue
            row_currency = currency
            if cur_col is not None:
                row_currency = record[cur_col].strip() or currency
            valid += 1
            yield (
                (key, key_is_id, day, o, h, lo, c, a, v, row_currency, None),
                f"{record[o_col]},{record[h_col]},{record[l_col]},{record[c_col]},{record[a_col]},{record[v_col]}",
            )
    finally:
        report.rows += rows
        report.valid += valid


def _good_key(raw: str | None, from_column: bool) -> str | None:
    key = raw.strip() if from_column and raw is not None else raw
    return key if key and id_problem(key) is None else None


def _good_date(raw: str, latest: date) -> date | None:
    try:
        day = _parse_date(raw)
    except ValueError:
        return None
    return None if date_problem(day, latest) else day


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
    whether a parsed row is usable is `shared.contract.validation.row_problem`, the rule the stream applies too."""
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
