-- depends: 0015_absent_recorded_index
-- Issue 28 (found by a benchmark run): the history trigger looks up, for every superseded row, its key's newest
-- version (a LATERAL probe of numeric_window_embedding_versions). Planned while that table's statistics said it was
-- empty (autovacuum analyzed it so), the probe is a sequential scan, and the statement's own INSERT into the same
-- table makes each later probe read every row inserted before it: a DELETE of 152,363 embeddings ran over 8 minutes,
-- quadratic in its rows. The key index (entity_type, entity_id, as_of_date, model_id, recorded_to) always answers
-- the probe; inside this function the planner uses it whatever the statistics say (the transition tables it also
-- reads are not relations, so nothing else changes).
ALTER FUNCTION embedder_keep_superseded_embeddings() SET enable_seqscan = off;
