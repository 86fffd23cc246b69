"""What a tick emits, as plain Python: the SPEC section 3 embeddings of a set of windows."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date

import numpy as np

from shared.encoder import apply_model, encode_windows
from shared.models import get_model
from streams.window import arrays


def embeddings_for_tick(
    windows: Iterable[tuple[str, bytes | None]], as_of: date, window_days: int, model_ids: Iterable[str]
) -> Iterator[tuple[str, str, bytes]]:
    """(instrument_id, model_id, vector bytes) for each window with enough history at `as_of`."""
    models = [get_model(m) for m in model_ids]
    target = np.array([as_of], dtype="datetime64[D]")
    for instrument_id, state in windows:
        d, c, v = arrays(state)
        batch = encode_windows(d, c, v, target, window_days)
        if batch.as_of.size == 0:
            continue
        for model in models:
            yield instrument_id, model.model_id, apply_model(batch.flat, model).astype("<f4", copy=False)[0].tobytes()
