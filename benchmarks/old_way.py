"""The platform's previous script, as it worked: one (instrument, as_of) at a time — one query for
the look-back, one INSERT, one commit each. Kept only to measure what the project replaces."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import numpy as np
import psycopg

from shared.contract.encoder import LOOKBACK_FACTOR, embed, to_bytes
from shared.contract.models import get_model
from shared.store.embedding_store import window_spec_sql


def old_loop(
    url: str, instrument_ids: Sequence[str], as_of_dates: Sequence[date], window_days: int, model_id: str
) -> int:
    """Embeddings written, the old way."""
    model = get_model(model_id)
    written = 0
    with psycopg.connect(url) as conn:
        for instrument_id in instrument_ids:
            for as_of in as_of_dates:
                rows = conn.execute(
                    """SELECT trade_date, close, volume FROM prices_daily
                       WHERE instrument_id = %s AND trade_date BETWEEN %s AND %s ORDER BY trade_date""",
                    (instrument_id, as_of - timedelta(days=LOOKBACK_FACTOR * window_days), as_of),
                ).fetchall()
                if not rows:
                    continue
                d, c, v = zip(*rows)
                vector = embed(
                    np.array(d, dtype="datetime64[D]"),
                    np.array(c),
                    np.array(v),
                    np.datetime64(as_of, "D"),
                    window_days,
                    model,
                )
                if vector is None:
                    continue
                conn.execute(
                    f"""INSERT INTO numeric_window_embeddings
                            (entity_type, entity_id, window_spec, as_of_date, model_id, vector)
                        VALUES ('INSTRUMENT', %s, {window_spec_sql("%s")}, %s, %s, %s)
                        ON CONFLICT (entity_type, entity_id, as_of_date, model_id)
                        DO UPDATE SET vector = EXCLUDED.vector""",
                    (instrument_id, window_days, as_of, model_id, to_bytes(vector)),
                )
                conn.commit()
                written += 1
    return written
