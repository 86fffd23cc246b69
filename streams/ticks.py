"""What a tick emits, as plain Python: the SPEC section 3 embeddings of a set of windows."""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import date

import numpy as np

from shared.encoder import LOOKBACK_FACTOR, apply_model, encode_windows
from shared.models import get_model
from streams.window import Window


def embeddings_for_tick(
    windows: Iterable[tuple[str, bytes | None]], as_of: date, window_days: int, model_ids: Iterable[str]
) -> Iterator[tuple[str, str, bytes]]:
    """(instrument_id, model_id, vector bytes) for each window with enough history at `as_of`."""
    models = [get_model(m) for m in model_ids]
    target = np.array([as_of], dtype="datetime64[D]")
    for instrument_id, state in windows:
        d, c, v = Window.parse(state).arrays()
        batch = encode_windows(d, c, v, target, window_days)
        if batch.as_of.size == 0:
            continue
        for model in models:
            yield instrument_id, model.model_id, apply_model(batch.flat, model).astype("<f4", copy=False)[0].tobytes()


def record_tick(log: bytes | None, day: int, window_days: int, model_ids: Iterable[str], keep_days: int,
                offset: int = -1) -> bytes:
    """The tick log of one (run, partition) with `day` added: the latest tick's window and models,
    the processed tick days within `keep_days` of the newest one (what a correction can reach), and
    the source offset of the last tick applied."""
    old = json.loads(log) if log else {"days": [], "o": -1}
    days = set(old["days"])
    days.add(day)
    newest = max(days)
    kept = sorted(d for d in days if d >= newest - keep_days)
    return json.dumps({"w": window_days, "m": list(model_ids), "days": kept, "o": max(offset, old.get("o", -1))}).encode()


def tick_config(log: bytes) -> tuple[int, list[str], list[int]]:
    """(window_days, model_ids, processed tick days) of a tick log."""
    value = json.loads(log)
    return value["w"], value["m"], value["days"]


def tick_log_offset(log: bytes | None) -> int:
    """Source offset of the last tick recorded (-1 when none)."""
    return json.loads(log).get("o", -1) if log else -1


def ticks_affected(days: list[int], trade_day: int, window_days: int) -> list[int]:
    """Processed ticks whose look-back contains `trade_day`: trade_day <= T <= trade_day + 3N."""
    last = trade_day + LOOKBACK_FACTOR * window_days
    return [t for t in days if trade_day <= t <= last]
