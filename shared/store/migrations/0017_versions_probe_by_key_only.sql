-- depends: 0016_versions_probe_by_index
-- Issue 28 (found by a benchmark run, again): with sequential scans off (0016), the trigger's probe for a superseded
-- key's newest version, max(recorded_to) of that key, was planned on the versions table's index on recorded_to
-- alone (read backwards, the key as a filter) while the table's statistics said it was empty: every probe read
-- every version the same statement had added before it, quadratic again (a DELETE of ~150,000 embeddings ran over
-- 11 minutes; 4,498,500 index entries read for 3,000 rows). The key index (entity_type, entity_id, as_of_date,
-- model_id, recorded_to) holds every column the probe needs: inside this function only an index-only scan is
-- left to the planner, and of the versions table's indexes only the key index can answer the probe that way.
-- (The function's other reads are of its transition tables, which are not relations.)
ALTER FUNCTION embedder_keep_superseded_embeddings() SET enable_indexscan = off;
ALTER FUNCTION embedder_keep_superseded_embeddings() SET enable_bitmapscan = off;
