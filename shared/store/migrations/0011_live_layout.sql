-- Issue 18: the live service's layout (shared/live_layout.py). A repartition starts a new generation:
-- a prices topic and state tables of their own, windows reloaded from prices_daily.
CREATE TABLE IF NOT EXISTS embedder_live_layout (
    app_id varchar(200) PRIMARY KEY,
    partitions int NOT NULL CHECK (partitions > 0),
    generation int NOT NULL DEFAULT 0 CHECK (generation >= 0),
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text
);

-- The state a worker group holds is a state format and a layout generation.
ALTER TABLE embedder_state_format ADD COLUMN IF NOT EXISTS generation int NOT NULL DEFAULT 0;
