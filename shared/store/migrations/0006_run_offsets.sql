-- depends: 0005_tick_rows_missing
-- Where a replay's messages start and end on the prices topic (partition -> offset): the lag page
-- shows a replay's progress as the worker group's committed offsets between the two.
ALTER TABLE embedder_runs ADD COLUMN IF NOT EXISTS start_offsets jsonb;
ALTER TABLE embedder_runs ADD COLUMN IF NOT EXISTS target_offsets jsonb;
