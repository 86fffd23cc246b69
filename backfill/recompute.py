"""Maintained keys recomputed from `prices_daily`: what they should hold, and writing it.

One computation (the batch path's reader and `shared.contract.encoder`) serves the three users of "what should
the table hold here": the correction path (`live.corrections`), `embedder verify` and the worker's
parity audit. Writes go through the same store as every other path (`write_embeddings`, and
`write_absent` for keys whose window has too little history), fenced by the claim read before the prices.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import psycopg

from shared.contract.encoder import LOOKBACK_FACTOR, apply_model, encode_windows
from shared.contract.models import get_model
from shared.store.embedding_store import write_embeddings
from shared.store.maintained_keys import MaintainedKey, write_absent
from shared.store.price_history import read_histories
from shared.store.write_claims import read_claim

READ_CHUNK_INSTRUMENTS = 32

Key = tuple[str, date, str]


def expected_vectors(conn: psycopg.Connection, keys: Iterable[MaintainedKey]) -> dict[Key, bytes | None]:
    """SPEC section 3 over `prices_daily` now, for each key: its vector bytes, or None for too little
    history. Reads each instrument's rows once, in chunks of instruments (memory: one chunk)."""
    by_instrument: dict[str, list[MaintainedKey]] = defaultdict(list)
    for k in keys:
        by_instrument[k.entity_id].append(k)
    out: dict[Key, bytes | None] = {}
    ids = list(by_instrument)
    for start in range(0, len(ids), READ_CHUNK_INSTRUMENTS):
        chunk = ids[start : start + READ_CHUNK_INSTRUMENTS]
        wanted = [k for i in chunk for k in by_instrument[i]]
        lo = min(k.as_of_date - timedelta(days=LOOKBACK_FACTOR * k.window_days) for k in wanted)
        hi = max(k.as_of_date for k in wanted)
        histories = read_histories(conn, chunk, lo, hi)
        for instrument_id in chunk:
            out.update(_instrument_vectors(histories.get(instrument_id), by_instrument[instrument_id]))
    return out


def _instrument_vectors(history, keys: Sequence[MaintainedKey]) -> dict[Key, bytes | None]:
    out: dict[Key, bytes | None] = {k.key: None for k in keys}
    if history is None:
        return out
    groups: dict[int, dict[str, list[date]]] = defaultdict(lambda: defaultdict(list))
    for k in keys:
        groups[k.window_days][k.model_id].append(k.as_of_date)
    for window_days, by_model in groups.items():
        dates = sorted({d for ds in by_model.values() for d in ds})
        batch = encode_windows(
            history.trade_dates, history.close, history.volume, np.array(dates, dtype="datetime64[D]"), window_days
        )
        row_of = {d: j for j, d in enumerate(batch.as_of.astype(object).tolist())}
        for model_id, wanted in by_model.items():
            vectors = apply_model(batch.flat, get_model(model_id)).astype("<f4", copy=False)
            instrument_id = keys[0].entity_id
            for d in wanted:
                j = row_of.get(d)
                if j is not None:
                    out[(instrument_id, d, model_id)] = vectors[j].tobytes()
    return out


@dataclass
class Rewritten:
    """What `rewrite_keys` did: keys recomputed, rows inserted or changed, rows removed (too little
    history now), keys refused (the table held them computed from newer prices), and the rest unchanged."""

    keys: int = 0
    changed: int = 0
    removed: int = 0
    refused: int = 0

    @property
    def unchanged(self) -> int:
        return self.keys - self.changed - self.removed - self.refused

    def add(self, other: Rewritten) -> None:
        self.keys += other.keys
        self.changed += other.changed
        self.removed += other.removed
        self.refused += other.refused


def write_expected(
    conn: psycopg.Connection, keys: Sequence[MaintainedKey], expected: dict[Key, bytes | None], claim: int | None
) -> Rewritten:
    """Write `expected` for `keys` in the caller's transaction, fenced by `claim` (read before the prices
    it was computed from: `shared.store.write_claims`): vectors upserted (identical ones left alone), keys
    without enough history recorded absent and their rows deleted."""
    window = {k.key: k.window_days for k in keys}
    present = [(k[0], k[1], k[2], window[k], v) for k, v in expected.items() if v is not None and k in window]
    absent = [(k[0], k[1], k[2], window[k]) for k, v in expected.items() if v is None and k in window]
    written = write_embeddings(conn, present, claim)
    removed = write_absent(conn, absent, claim)
    return Rewritten(len(window), written.changed, removed.changed, written.refused + removed.refused)


def rewrite_keys(conn: psycopg.Connection, keys: Sequence[MaintainedKey]) -> Rewritten:
    """Recompute `keys` from `prices_daily` and write what differs, in the caller's transaction."""
    if not keys:
        return Rewritten()
    claim = read_claim(conn)  # before the prices
    return write_expected(conn, keys, expected_vectors(conn, keys), claim)
