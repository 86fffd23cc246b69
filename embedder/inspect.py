"""`embedder show`: what a person checks after a run, read back from Postgres."""

from __future__ import annotations

from datetime import date

import numpy as np

from embedder.console import out
from shared.store.db import connection
from shared.store.embedding_reads import count_at, first_at


def summarise(database_url: str, as_of: date, model_id: str, values: int = 6) -> int:
    """Print the row count for (as_of, model) and one decoded vector; returns the count."""
    with connection(database_url) as conn:
        count = count_at(conn, as_of, model_id)
        out.print(f"numeric_window_embeddings rows for as_of {as_of}, model {model_id}: {count}", highlight=False)
        row = first_at(conn, as_of, model_id)
    if row:
        vector = np.frombuffer(row[2], dtype="<f4")
        head = ", ".join(f"{v:.6g}" for v in vector[:values])
        out.print(f"{row[0]} window_spec={row[1]} vector shape={vector.shape} first values=[{head}]", highlight=False)
    return count
