-- depends: 0014_definer_triggers
-- Issue 28: the worker's parity audit checks again every key recorded absent since its last round (a tick or a
-- correction that found no embedding: where that was wrong, no stored row is left for any other check to see).
-- An index on when the record was written keeps that read a range scan however many keys are recorded absent.
CREATE INDEX IF NOT EXISTS embedder_absent_embeddings_recorded_idx ON embedder_absent_embeddings (recorded_at);
