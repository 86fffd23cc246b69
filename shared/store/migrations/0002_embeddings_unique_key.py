"""Make every embedding write an idempotent upsert: dedupe, then add the unique key.

The platform's old plain INSERTs may have left several rows for one
(entity_type, entity_id, as_of_date, model_id); the newest embedding_id is kept.
"""

import logging

from yoyo import step

__depends__ = {"0001_base_tables"}

log = logging.getLogger("embedder.migrations")

KEY = "numeric_window_embeddings_entity_asof_model_key"


def apply_step(conn) -> None:
    cur = conn.cursor()
    cur.execute("SELECT 1 FROM pg_constraint WHERE conname = %s", (KEY,))
    if cur.fetchone():
        return
    cur.execute(
        """
        DELETE FROM numeric_window_embeddings e
        USING numeric_window_embeddings newer
        WHERE e.entity_type = newer.entity_type
          AND e.entity_id = newer.entity_id
          AND e.as_of_date = newer.as_of_date
          AND e.model_id = newer.model_id
          AND e.embedding_id < newer.embedding_id
        """
    )
    removed = cur.rowcount
    log.info("removed %d duplicate numeric_window_embeddings rows (kept the newest embedding_id)", removed)
    cur.execute(
        f"ALTER TABLE numeric_window_embeddings ADD CONSTRAINT {KEY} "
        "UNIQUE (entity_type, entity_id, as_of_date, model_id)"
    )


def rollback_step(conn) -> None:
    conn.cursor().execute(f"ALTER TABLE numeric_window_embeddings DROP CONSTRAINT IF EXISTS {KEY}")


steps = [step(apply_step, rollback_step)]
