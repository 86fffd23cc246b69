"""What a tick emits, as plain Python: the SPEC section 3 embeddings of a set of windows."""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import date

import numpy as np

from shared.encoder import LOOKBACK_FACTOR, apply_model, encode_windows
from shared.models import get_model
from streams.window import Window, date_of, day_number


SPACING = 1 << 20  # days between instruments on the joint timeline: far beyond any look-back


def embeddings_at(windows: Sequence[tuple[str, bytes | None]], as_of_days: Sequence[int], window_days: int,
                  model_ids: Iterable[str]) -> list[tuple[str, date, str, bytes]]:
    """(instrument_id, as_of, model_id, vector bytes) of every window at every as_of day with enough
    history, computed in one `encode_windows` call: each instrument's days are shifted onto its own
    stretch of one timeline, so no look-back ever reaches another instrument's rows."""
    models = [get_model(m) for m in model_ids]
    targets = np.unique(np.asarray(as_of_days, dtype=np.int64))
    if not windows or targets.size == 0:
        return []
    days, closes, volumes, shifted = [], [], [], []
    for k, (_, state) in enumerate(windows):
        rows = Window.parse(state).rows
        shift = k * SPACING
        days.append(rows["day"].astype(np.int64) + shift)
        closes.append(rows["close"])
        volumes.append(rows["volume"])
        shifted.append(targets + shift)
    all_targets = np.concatenate(shifted)
    batch = encode_windows(np.concatenate(days).astype("datetime64[D]"), np.concatenate(closes),
                           np.concatenate(volumes), all_targets.astype("datetime64[D]"), window_days)
    got = batch.as_of.astype(np.int64)
    owner = np.searchsorted(all_targets, got) // targets.size
    as_of = [date_of(int(t)) for t in got - owner * SPACING]
    ids = [windows[int(k)][0] for k in owner]
    out: list[tuple[str, date, str, bytes]] = []
    for model in models:
        vectors = apply_model(batch.flat, model).astype("<f4", copy=False)
        raw = vectors.tobytes()
        width = vectors.shape[1] * 4
        out.extend((ids[j], as_of[j], model.model_id, raw[j * width:(j + 1) * width]) for j in range(len(ids)))
    return out


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
