"""The `embedder` command (CLI wiring and local development services), and the consumer's read API:

    from embedder import read_embeddings, read_embeddings_frame
    e = read_embeddings("num-regime-core-v1", as_of="2019-12-31", market_id="US_EQ")
    e.instrument_ids, e.as_of_dates, e.vectors  # ids, dates, float32 matrix (one row per embedding)
    df = read_embeddings_frame("num-regime-core-v1", as_of="2019-12-31", market_id="US_EQ",
                               known_at="2026-11-23T17:00:00Z")  # the table as it was then

(`shared/store/embedding_reads.py`; `versions_of` in `shared/store/embedding_history.py` lists one key's versions.)
Loaded on first use, so the CLI does not import numpy for commands that do not need it.
"""

from __future__ import annotations

from typing import Any

_API = {
    "read_embeddings": "shared.store.embedding_reads",
    "read_embeddings_frame": "shared.store.embedding_reads",
    "Embeddings": "shared.store.embedding_reads",
    "versions_of": "shared.store.embedding_history",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'embedder' has no attribute {name!r}")
