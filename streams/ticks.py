"""What a tick emits, as plain Python: the SPEC section 3 embeddings of a set of windows."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from shared.encoder import apply_model, encode_windows
from shared.messages import Embedding
from shared.models import get_model
from streams.window import Window, date_of

SPACING = 1 << 20  # days between instruments on the joint timeline: far beyond any look-back


def embeddings_at(windows: Sequence[tuple[str, Window]], as_of_days: Iterable[int], window_days: int,
                  model_ids: Iterable[str]) -> list[Embedding]:
    """(instrument_id, as_of, model_id, vector bytes) of every window at every as_of day with enough
    history, computed in one `encode_windows` call: each instrument's days are shifted onto its own
    stretch of one timeline, so no look-back ever reaches another instrument's rows."""
    models = [get_model(m) for m in model_ids]
    targets = np.unique(np.fromiter(as_of_days, dtype=np.int64))
    if not windows or targets.size == 0:
        return []
    shifts = np.arange(len(windows), dtype=np.int64) * SPACING
    days = np.concatenate([w.rows["day"].astype(np.int64) + s for (_, w), s in zip(windows, shifts)])
    closes = np.concatenate([w.rows["close"] for _, w in windows])
    volumes = np.concatenate([w.rows["volume"] for _, w in windows])
    all_targets = (shifts[:, None] + targets[None, :]).ravel()
    batch = encode_windows(days.astype("datetime64[D]"), closes, volumes, all_targets.astype("datetime64[D]"),
                           window_days)
    got = batch.as_of.astype(np.int64)
    owner = np.searchsorted(all_targets, got) // targets.size
    as_of = [date_of(int(t)) for t in got - owner * SPACING]
    ids = [windows[int(k)][0] for k in owner]
    out: list[Embedding] = []
    for model in models:
        vectors = apply_model(batch.flat, model).astype("<f4", copy=False)
        raw = vectors.tobytes()
        width = vectors.shape[1] * 4
        out.extend((ids[j], as_of[j], model.model_id, raw[j * width:(j + 1) * width]) for j in range(len(ids)))
    return out
