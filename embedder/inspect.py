"""`embedder show`: what a person checks after a run, read back from Postgres."""

from __future__ import annotations

from datetime import date

import numpy as np

from embedder.console import out
from shared.store.db import connection, one


def summarise(database_url: str, as_of: date, model_id: str, values: int = 6) -> int:
    """Print the row count for (as_of, model) and one decoded vector; returns the count."""
    with connection(database_url) as conn:
        count = one(
            conn.execute(
                "SELECT count(*) FROM numeric_window_embeddings WHERE as_of_date = %s AND model_id = %s",
                (as_of, model_id),
            )
        )[0]
        out.print(f"numeric_window_embeddings rows for as_of {as_of}, model {model_id}: {count}", highlight=False)
        row = conn.execute(
            """SELECT entity_id, window_spec, vector FROM numeric_window_embeddings
               WHERE as_of_date = %s AND model_id = %s ORDER BY entity_id LIMIT 1""",
            (as_of, model_id),
        ).fetchone()
    if row:
        vector = np.frombuffer(row[2], dtype="<f4")
        head = ", ".join(f"{v:.6g}" for v in vector[:values])
        out.print(f"{row[0]} window_spec={row[1]} vector shape={vector.shape} first values=[{head}]", highlight=False)
    return count
