"""A block of a price file parsed into COPY text, in a process of its own.

The import's cost is Python parsing; the database's is a COPY. Blocks of the file are parsed by a
pool of processes (`parse_block`), each returning what the import writes — CSV text in the staging
layout, and in `prices_daily`'s layout for the direct path — plus what it must know before writing:
the instruments named, each one's first and last date, and the counts of the block's rows.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from backfill.price_files import FileSpec, ReadReport, records_with_text


@dataclass
class ParsedBlock:
    rows: int
    valid: int
    rejected: Counter
    csv: str
    """With `staged` False: one line per key, its last valid row — instrument_id (the key), trade_date,
    open, high, low, close, adjusted_close, volume, currency — the layout of prices_daily and of the
    staging table's first columns. With `staged` True (a row carries metadata): every valid row in the
    staging layout (seq, key, key_is_id, trade_date, ..., currency, metadata)."""
    staged: bool
    lines: int
    """Lines of `csv`."""
    keys: dict[tuple[str, bool], str] = field(default_factory=dict)
    """(key, key_is_id) -> the smallest currency of its rows: what registering instruments needs."""
    spans: dict[str, tuple[date, date]] = field(default_factory=dict)
    """key -> its first and last trade_date in the block."""


PLAIN_NUMBERS = re.compile(r"[0-9.+\-,]{1,200}")
"""Number text PostgreSQL reads as Python did: plain decimals (no exponent, underscore or other digits)."""


def csv_field(text: str) -> str:
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(ch in text for ch in ',"\r\n ') else text


def parse_block(text: str, first_seq: int, spec: FileSpec) -> ParsedBlock:
    """Validate the records of `text` (whole CSV records, no header); rows are numbered from `first_seq`
    in file order (the last valid row of a key wins by that number). Numbers are passed on as the file
    wrote them where PostgreSQL reads them to the same double, else as Python's shortest repr."""
    report = ReadReport(Path("-"))
    lines: list[str] = []
    last: dict[tuple[str, date], int] = {}  # key -> its line (a later valid row replaces it)
    keys: dict[tuple[str, bool], str] = {}
    spans: dict[str, list] = {}
    fields: dict[str, str] = {}  # key or currency -> as a CSV field
    days: dict[date, str] = {}
    staged = spec.exact_only
    seq = first_seq
    plain = PLAIN_NUMBERS.fullmatch
    for r, numbers in records_with_text(text.splitlines(keepends=True), spec, report):
        key, key_is_id, day, currency = r[0], r[1], r[2], r[9]
        if numbers is None or not plain(numbers):
            numbers = ",".join(map(repr, r[3:9]))
        key_field = fields.get(key) or fields.setdefault(key, csv_field(key))
        currency_field = fields.get(currency) or fields.setdefault(currency, csv_field(currency))
        day_text = days.get(day) or days.setdefault(day, day.isoformat())
        if staged:
            meta = "" if r[10] is None else csv_field(r[10]) if r[10] else '""'
            lines.append(
                f"{seq},{key_field},{'t' if key_is_id else 'f'},{day_text},{numbers},{currency_field},{meta}\n"
            )
            seq += 1
        else:
            line = f"{key_field},{day_text},{numbers},{currency_field}\n"
            at = last.get((key, day))
            if at is None:
                last[(key, day)] = len(lines)
                lines.append(line)
            else:
                lines[at] = line
        known = keys.get((key, key_is_id))
        if known is None or currency < known:
            keys[(key, key_is_id)] = currency
        span = spans.get(key)
        if span is None:
            spans[key] = [day, day]
        elif day < span[0]:
            span[0] = day
        elif day > span[1]:
            span[1] = day
    return ParsedBlock(
        report.rows,
        report.valid,
        report.rejected,
        "".join(lines),
        staged,
        len(lines),
        keys,
        {k: (a, b) for k, (a, b) in spans.items()},
    )
