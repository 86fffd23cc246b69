"""What the processor hands to the sink: embeddings of one source partition, and ticks they complete."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import NamedTuple


class Embedding(NamedTuple):
    """One computed embedding. Empty `vector` bytes mean: the key has too little history (a tick asked for
    it, or a correction left its window short): record it as absent, delete any stored row."""

    instrument_id: str
    as_of: date
    model_id: str
    vector: bytes


@dataclass(frozen=True)
class TickDone:
    """A tick's as_of date is complete for one source partition, and what it computed there."""

    as_of: date
    embedded: int
    insufficient: int = 0
    missing_today: int = 0


@dataclass(frozen=True)
class EmbeddingBatch:
    """Embeddings computed from one source partition, and optionally the ticks they complete.

    The sink writes `items` and records `done` in the same transaction. `scope` is the tick's
    market (`*` for every market; empty for replays).
    """

    run: str
    window_days: int
    partition: int
    items: list[Embedding]
    done: tuple[TickDone, ...] = ()
    rows_missing: int = 0
    scope: str = ""
    redelivered: bool = False
    """A tick that came again (a crash or rebalance before its offset was committed): its first
    output may already be committed, so its completion counts must not go down."""
    recheck: tuple[tuple[str, date], ...] = ()
    """(instrument, first as_of) of live instruments a tick found without any window (state lost): the
    sink records their keys absent and queues them for the database path, which computes them from
    prices_daily."""
    cause: str = ""
    """Corrections: the price changes that re-emitted these embeddings (recorded with the versions they
    supersede)."""
    computed_from: int | None = None
    """The claim of these embeddings (`shared.store.write_claims`): the stamp of the message they were computed
    at, or the relay round read before a look-back was read from prices_daily. None: a message of a
    release before claims (not fenced)."""

    @property
    def size(self) -> int:
        return len(self.items) + len(self.done)
