"""What a tick emits, as plain Python: the SPEC section 3 embeddings of a set of windows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from shared.contract.encoder import apply_model, encode_windows
from shared.contract.models import get_model
from streams.output import Embedding
from streams.window import ROW, Window, date_of

SPACING = 1 << 20  # days between instruments on the joint timeline: far beyond any look-back
CHUNK_TARGETS = 1024
"""(window, as_of) pairs per `encode_windows` call: its arrays (~9 KB per pair) then stay in the CPU's cache.
A replay's tick of a partition asks for ~5,000 at once: 1.7 us per embedding in one call, 0.65 in chunks."""


class Timeline:
    """Many windows on one timeline: each instrument's days shifted onto a stretch of their own
    (SPACING apart, far beyond any look-back), so one vectorised call serves them all."""

    def __init__(self, windows: Sequence[tuple[str, Window]]):
        self.ids = [i for i, _ in windows]
        self.shifts = np.arange(len(windows), dtype=np.int64) * SPACING
        if windows:
            # One copy of every window's rows, their buffers joined as bytes: numpy's concatenation of structured
            # arrays promotes their fields once per array (5x slower for a partition's 600 windows).
            rows = np.frombuffer(b"".join([w.rows.data for _, w in windows]), dtype=ROW)
            lengths = np.fromiter((w.rows.size for _, w in windows), dtype=np.int64, count=len(windows))
            self.days = rows["day"].astype(np.int64) + np.repeat(self.shifts, lengths)
            self.closes, self.volumes = rows["close"], rows["volume"]
        else:
            self.days, self.closes, self.volumes = (np.empty(0, dtype=np.int64), np.empty(0), np.empty(0))

    def present(self, as_of_days: Sequence[int]) -> np.ndarray:
        """(windows x days) True where the window holds a row for that day."""
        targets = self.shifts[:, None] + np.asarray(as_of_days, dtype=np.int64)[None, :]
        idx = np.searchsorted(self.days, targets)
        found = np.zeros(targets.shape, dtype=bool)
        inside = idx < self.days.size
        found[inside] = self.days[idx[inside]] == targets[inside]
        return found

    def embeddings(self, as_of_days: Iterable[int], window_days: int, model_ids: Iterable[str]) -> list[Embedding]:
        """(instrument_id, as_of, model_id, vector bytes) of every window at every as_of day with
        enough history (`compute`)."""
        return self.compute(as_of_days, window_days, model_ids).items

    def compute(self, as_of_days: Iterable[int], window_days: int, model_ids: Iterable[str]) -> Computed:
        """The embeddings of every window at every as_of day with enough history, in `encode_windows` calls of up
        to `CHUNK_TARGETS` (window, day) pairs each, with the pairs computed."""
        models = [get_model(m) for m in model_ids]
        targets = np.unique(np.fromiter(as_of_days, dtype=np.int64))
        if not self.ids or targets.size == 0:
            return Computed([], [], np.empty(0, dtype=np.int64))
        all_targets = (self.shifts[:, None] + targets[None, :]).ravel()
        trade_dates = self.days.astype("datetime64[D]")
        by_model: list[list[Embedding]] = [[] for _ in models]
        computed_ids: list[str] = []
        computed_days: list[np.ndarray] = []
        for start in range(0, all_targets.size, CHUNK_TARGETS):
            chunk = all_targets[start : start + CHUNK_TARGETS]
            batch = encode_windows(trade_dates, self.closes, self.volumes, chunk.astype("datetime64[D]"), window_days)
            got = batch.as_of.astype(np.int64)
            owner = np.searchsorted(all_targets, got) // targets.size
            got_days = got - owner * SPACING
            days, which = np.unique(got_days, return_inverse=True)  # a live tick: one day for all
            dates = [date_of(int(t)) for t in days]
            as_of = [dates[k] for k in which.tolist()]
            ids = [self.ids[k] for k in owner.tolist()]
            computed_ids.extend(ids)
            computed_days.append(got_days)
            for model, out in zip(models, by_model):
                vectors = apply_model(batch.flat, model).astype("<f4", copy=False)
                raw = vectors.tobytes()
                width = vectors.shape[1] * 4
                slices = [raw[k : k + width] for k in range(0, len(ids) * width, width)]
                # made by tuple.__new__ in C: a NamedTuple's own constructor is a Python function (0.26 -> 0.15 us each)
                out.extend(map(tuple.__new__, repeat(Embedding), zip(ids, as_of, repeat(model.model_id), slices)))
        items = [e for out in by_model for e in out] if len(by_model) > 1 else by_model[0]
        return Computed(items, computed_ids, np.concatenate(computed_days))


@dataclass(frozen=True)
class Computed:
    """Embeddings a tick computed, and the (instrument, as_of day) of each of its first model's: the tick's counts
    are read from these, not from its embeddings again (three passes over a replay tick's ~5,000 per partition
    were 5 % of the worker's CPU)."""

    items: list[Embedding]
    ids: list[str]
    days: np.ndarray
    """int64 day numbers, one per entry of `ids`."""

    @staticmethod
    def joined(parts: Sequence[Computed]) -> Computed:
        if len(parts) == 1:
            return parts[0]
        return Computed(
            [e for p in parts for e in p.items],
            [i for p in parts for i in p.ids],
            np.concatenate([p.days for p in parts]) if parts else np.empty(0, dtype=np.int64),
        )

    def per_day(self) -> dict[int, int]:
        """Instruments embedded, by as_of day."""
        days, counts = np.unique(self.days, return_counts=True)
        return dict(zip(days.tolist(), counts.tolist()))

    def ids_on(self, day: int) -> set[str]:
        """The instruments embedded on `day`."""
        ids = self.ids
        if self.days.size and int(self.days.min()) == int(self.days.max()) == day:
            return set(ids)  # a live tick: one day
        return {ids[k] for k in np.flatnonzero(self.days == day).tolist()}

    def pairs(self) -> set[tuple[str, int]]:
        """(instrument, as_of day) of every embedding."""
        return set(zip(self.ids, self.days.tolist()))


def embeddings_at(
    windows: Sequence[tuple[str, Window]], as_of_days: Iterable[int], window_days: int, model_ids: Iterable[str]
) -> list[Embedding]:
    """The embeddings of `windows` at `as_of_days` (see `Timeline.embeddings`)."""
    return Timeline(windows).embeddings(as_of_days, window_days, model_ids)


def computed_at(
    windows: Sequence[tuple[str, Window]], as_of_days: Iterable[int], window_days: int, model_ids: Iterable[str]
) -> Computed:
    """`embeddings_at` with the pairs computed (`Timeline.compute`)."""
    return Timeline(windows).compute(as_of_days, window_days, model_ids)
