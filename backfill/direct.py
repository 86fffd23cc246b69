"""`embedder replay --direct`: the batch path, computed from Postgres without Kafka.

It is also the reference the stream is checked against: both call
`shared.contract.encoder.encode_windows`, and both write through `shared.store.embedding_store.write_embeddings`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backfill.selection import RunSelection
from shared.contract.encoder import apply_model, encode_windows, lookback_start
from shared.store.db import connection
from shared.store.embedding_store import set_cause, write_embeddings
from shared.store.maintained_keys import queue_changes_since, write_absent
from shared.store.outbox import outbox_position
from shared.store.price_history import read_histories
from shared.store.write_claims import read_claim

READ_CHUNK_INSTRUMENTS = 16


@dataclass
class DirectResult:
    instruments: int = 0
    as_of_dates: int = 0
    embeddings: int = 0
    insufficient: int = 0
    refused: int = 0
    """Embeddings not written: the table held them computed from newer prices (`shared.store.write_claims`)."""


ProgressFn = Callable[[int, int], None]
"""Called with (instruments just finished, embeddings just committed)."""


def run_direct(
    database_url: str,
    selection: RunSelection,
    write_batch: int = 20_000,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: ProgressFn | None = None,
) -> DirectResult:
    """Compute and upsert every embedding of the selection; commits every `write_batch` rows.

    Keys of the selection with too little history are recorded absent (and any stale row of theirs
    deleted), so a later change that gives them history brings them in. Changes captured while the
    run read prices_daily are queued for the correction path at the end: nothing the run wrote from
    rows read before such a change stays stale."""
    result = DirectResult()
    n = selection.window_days
    with connection(database_url) as conn:
        position = outbox_position(conn)
        claim = read_claim(conn)  # before any price is read: what every write of the run claims
        conn.commit()
        ids = selection.instruments(conn)
        dates = selection.as_of_dates(conn, ids) if ids else []
        result.instruments, result.as_of_dates = len(ids), len(dates)
        if on_start:
            on_start(len(ids), len(dates))
        if not ids or not dates:
            return result
        as_of = np.array(dates, dtype="datetime64[D]")
        start = lookback_start(as_of.min(), n).astype(object)
        end = as_of.max().astype(object)
        pending: list[tuple] = []
        absent: list[tuple] = []
        finished = 0

        def flush() -> None:
            nonlocal finished
            if pending or absent:
                set_cause(conn, "direct", f"replay --direct {selection.describe()}")
                if pending:
                    result.refused += write_embeddings(conn, pending, claim).refused
                result.refused += write_absent(conn, absent, claim).refused
                conn.commit()
            absent.clear()
            result.embeddings += len(pending)
            if on_progress:
                on_progress(finished, len(pending))
            pending.clear()
            finished = 0

        for i in range(0, len(ids), READ_CHUNK_INSTRUMENTS):
            chunk = ids[i : i + READ_CHUNK_INSTRUMENTS]
            histories = read_histories(conn, chunk, start, end)
            for instrument_id in chunk:
                finished += 1
                history = histories.get(instrument_id)
                if history is None:
                    result.insufficient += len(dates)
                    absent.extend((instrument_id, d, m.model_id, n) for d in dates for m in selection.models)
                    continue
                batch = encode_windows(history.trade_dates, history.close, history.volume, as_of, n)
                result.insufficient += batch.insufficient
                batch_dates = batch.as_of.tolist()
                if batch.insufficient:
                    short = np.setdiff1d(as_of, batch.as_of).tolist()
                    absent.extend((instrument_id, d, m.model_id, n) for d in short for m in selection.models)
                for model in selection.models:
                    vectors = apply_model(batch.flat, model).astype("<f4", copy=False)
                    pending.extend(
                        (instrument_id, d, model.model_id, n, vectors[j].tobytes()) for j, d in enumerate(batch_dates)
                    )
            if len(pending) + len(absent) >= write_batch:
                flush()
        flush()
        if queue_changes_since(conn, position, ids):
            conn.commit()
    return result
