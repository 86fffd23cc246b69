"""`embedder verify`: recompute a selection from `prices_daily` and compare it with the table.

Chronon's online/offline consistency check at this product's scale: the keys checked are the
maintained keys of the selection (`shared.store.maintained_keys`: stored rows with their own window, recorded
absent keys) plus, when instruments and dates are both given, every key `replay --direct` would write
for that selection (its grid, at `--window-days`). Each is compared with SPEC section 3 over the prices
as they are now:

- `missing`: the reference has an embedding, the table has no row;
- `extra`: the table has a row, the reference has none (too little history, or no such instrument);
- `different`: both exist and the bytes (or the window) differ;
- `duplicate`: more than one row for one key (a table without the unique key).

`--repair` writes the reference for every finding through the same store as every path, in one
transaction per chunk of instruments.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date

import psycopg

from backfill.recompute import Key, Rewritten, expected_vectors, write_expected
from shared.contract.errors import BadArguments
from shared.contract.models import MODELS, validate_models
from shared.store.embedding_store import drop_duplicate_rows, set_cause
from shared.store.instruments import market_cut, trade_dates_between
from shared.store.maintained_keys import (
    MaintainedKey,
    absent_keys_between,
    maintained_instruments,
    maintained_models,
    stored_keys_between,
)
from shared.store.write_claims import read_claim

CHUNK_INSTRUMENTS = 32
EXAMPLES = 5
KINDS = ("missing", "extra", "different", "duplicate")


@dataclass(frozen=True)
class Finding:
    kind: str
    entity_id: str
    as_of_date: date
    model_id: str
    window_days: int | None

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "entity_id": self.entity_id,
            "as_of_date": self.as_of_date.isoformat(),
            "model_id": self.model_id,
            "window_days": self.window_days,
        }


def compare(
    keys: Sequence[MaintainedKey], stored: dict[Key, tuple[int | None, bytes]], expected: dict[Key, bytes | None]
) -> list[Finding]:
    """Findings for `keys`: stored (window, bytes) against the reference bytes (None: no embedding)."""
    out = []
    for k in keys:
        have, want = stored.get(k.key), expected.get(k.key)
        if have is None and want is not None:
            out.append(Finding("missing", *k.key, k.window_days))
        elif have is not None and want is None:
            out.append(Finding("extra", *k.key, k.window_days))
        elif have is not None and have[1] != want:
            out.append(Finding("different", *k.key, k.window_days))
    return out


@dataclass(frozen=True)
class VerifySelection:
    """What to verify: any of instruments (ids or a market cut), dates and models may be left open."""

    date_from: date | None = None
    date_to: date | None = None
    as_of: date | None = None
    market_id: str | None = None
    instrument_ids: tuple[str, ...] = ()
    limit: int | None = None
    offset: int = 0
    model_ids: tuple[str, ...] = ()
    window_days: int = 63

    def __post_init__(self) -> None:
        validate_models(list(self.model_ids))
        if self.limit is not None and self.limit < 0:
            raise BadArguments(f"--limit must not be negative, got {self.limit}")
        if self.offset < 0:
            raise BadArguments(f"--offset must not be negative, got {self.offset}")
        if self.as_of is not None and (self.date_from is not None or self.date_to is not None):
            raise BadArguments("give either --as-of or --from/--to, not both")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise BadArguments(f"--from {self.date_from} is after --to {self.date_to}")
        if self.market_id and self.instrument_ids:
            raise BadArguments("give either --market-id or --instrument-id, not both")
        if self.instrument_ids and (self.limit is not None or self.offset):
            raise BadArguments("--limit/--offset cut a market; they do not apply to --instrument-id")
        if (self.limit is not None or self.offset) and not self.market_id:
            raise BadArguments("--limit/--offset need --market-id")
        if self.window_days < 1:
            raise BadArguments(f"--window-days must be at least 1, got {self.window_days}")

    @property
    def lo(self) -> date | None:
        return self.as_of or self.date_from

    @property
    def hi(self) -> date | None:
        return self.as_of or self.date_to

    @property
    def has_grid(self) -> bool:
        """Instruments and dates both given: the keys `replay --direct` would write are checked too."""
        return bool(self.market_id or self.instrument_ids) and (
            self.as_of is not None or (self.date_from is not None and self.date_to is not None)
        )

    def instruments(self, conn: psycopg.Connection) -> list[str]:
        if self.instrument_ids:
            return list(self.instrument_ids)
        if self.market_id:
            return market_cut(conn, self.market_id, self.limit, self.offset)
        return maintained_instruments(conn, self.lo, self.hi)

    def grid_dates(self, conn: psycopg.Connection, ids: list[str]) -> list[date]:
        """The as_of dates `replay --direct` takes for this selection."""
        if self.as_of is not None:
            return [self.as_of]
        assert self.date_from is not None and self.date_to is not None  # has_grid: a range then
        return trade_dates_between(conn, ids, self.date_from, self.date_to)

    def models(self, conn: psycopg.Connection) -> list[str]:
        """The given models, else every known model stored or recorded absent."""
        if self.model_ids:
            return list(self.model_ids)
        return sorted(m for m in maintained_models(conn) if m in MODELS)


@dataclass
class VerifyReport:
    instruments: int = 0
    keys: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[Finding]] = field(default_factory=dict)
    unmaintained: int = 0
    """Stored rows in the selection that are not maintained (unknown model, no window in window_spec)."""
    repaired: Rewritten | None = None

    @property
    def equal(self) -> bool:
        return not any(self.counts[k] for k in KINDS)

    def add(self, findings: Sequence[Finding]) -> None:
        for f in findings:
            self.counts[f.kind] += 1
            shown = self.examples.setdefault(f.kind, [])
            if len(shown) < EXAMPLES:
                shown.append(f)

    def as_dict(self) -> dict:
        return {
            "equal": self.equal,
            "instruments": self.instruments,
            "keys_checked": self.keys,
            **{k: self.counts[k] for k in KINDS},
            "unmaintained_rows": self.unmaintained,
            "examples": {k: [f.as_dict() for f in v] for k, v in self.examples.items()},
            "repaired": None
            if self.repaired is None
            else {"keys": self.repaired.keys, "written": self.repaired.changed, "removed": self.repaired.removed},
        }


ProgressFn = Callable[[int, int], None]
"""Called with (instruments just checked, keys just checked)."""


def verify(
    conn: psycopg.Connection,
    selection: VerifySelection,
    repair: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_progress: ProgressFn | None = None,
) -> VerifyReport:
    """Compare the selection with the reference, chunk by chunk of instruments (memory: one chunk); with
    `repair`, write the reference for every finding (one transaction per chunk)."""
    report = VerifyReport(repaired=Rewritten() if repair else None)
    ids = selection.instruments(conn)
    models = selection.models(conn)
    dates = selection.grid_dates(conn, ids) if selection.has_grid and ids else []
    report.instruments = len(ids)
    if on_start:
        on_start(len(ids))
    for start in range(0, len(ids), CHUNK_INSTRUMENTS):
        chunk = ids[start : start + CHUNK_INSTRUMENTS]
        with conn.transaction():
            findings, checked = _verify_chunk(conn, selection, chunk, models, dates, report, repair)
        report.keys += checked
        report.add(findings)
        if on_progress:
            on_progress(len(chunk), checked)
    return report


def _verify_chunk(
    conn: psycopg.Connection,
    selection: VerifySelection,
    chunk: list[str],
    models: list[str],
    dates: list[date],
    report: VerifyReport,
    repair: bool,
) -> tuple[list[Finding], int]:
    claim = read_claim(conn) if repair else None  # before the prices: what a repair claims
    stored: dict[Key, tuple[int | None, bytes]] = {}
    keys: dict[Key, MaintainedKey] = {}
    duplicates: list[Finding] = []
    for i, d, m, n, vector, _ in stored_keys_between(conn, chunk, selection.lo, selection.hi, models or None):
        key = (i, d, m)
        if key in stored:
            duplicates.append(Finding("duplicate", i, d, m, n))
            continue
        stored[key] = (n, bytes(vector) if vector is not None else b"")
        if n and m in MODELS:
            keys[key] = MaintainedKey(i, d, m, n)
        else:
            report.unmaintained += 1
    for k in absent_keys_between(conn, chunk, selection.lo, selection.hi, models or None):
        keys.setdefault(k.key, k)
    for i in chunk:
        for d in dates:
            for m in models:
                keys.setdefault((i, d, m), MaintainedKey(i, d, m, selection.window_days))
    wanted = list(keys.values())
    expected = expected_vectors(conn, wanted)
    findings = compare(wanted, stored, expected)
    if repair and (findings or duplicates):
        set_cause(
            conn,
            "repair",
            f"embedder verify --repair: {len(findings)} key(s) differed from prices_daily, "
            f"{len(duplicates)} duplicate(s)",
        )
        if duplicates:
            drop_duplicate_rows(conn, [(f.entity_id, f.as_of_date, f.model_id) for f in duplicates])
        fix = {(f.entity_id, f.as_of_date, f.model_id) for f in findings + duplicates}
        fixed_keys = [keys[k] for k in fix if k in keys]
        assert report.repaired is not None  # verify() sets it when repairing
        report.repaired.add(write_expected(conn, fixed_keys, {k.key: expected[k.key] for k in fixed_keys}, claim))
    return findings + duplicates, len(wanted)
