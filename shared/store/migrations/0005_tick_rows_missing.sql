-- depends: 0004_live_capture
-- Rows a replay published to a partition before a tick that the worker never received: a replay
-- fails loudly on them instead of committing embeddings from incomplete windows.
ALTER TABLE embedder_tick_commits ADD COLUMN IF NOT EXISTS rows_missing int NOT NULL DEFAULT 0;
