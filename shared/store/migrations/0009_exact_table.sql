-- depends: 0008_live_queries
-- The table is always exact (issue 16): the database records what was computed, and which price
-- changes still have to reach the stored embeddings.

-- 1. The window of a stored row, read from its window_spec; NULL where the spec names none (such a
--    row is not maintained: nothing says which window it was computed over).
CREATE OR REPLACE FUNCTION embedder_window_days(spec jsonb) RETURNS int LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(spec -> 'window_days') = 'number'
                 AND (spec ->> 'window_days') ~ '^[1-9][0-9]{0,4}$'
                THEN (spec ->> 'window_days')::int END
$$;

-- 2. Keys a run asked for whose window had too little history, so they have no row in
--    numeric_window_embeddings: a later INSERT of older history must still bring them in. Together with
--    the stored rows these are the maintained keys (shared/maintained_keys.py).
CREATE TABLE IF NOT EXISTS embedder_absent_embeddings (
    entity_type varchar(32) NOT NULL DEFAULT 'INSTRUMENT',
    entity_id varchar(64) NOT NULL,
    as_of_date date NOT NULL,
    model_id varchar(64) NOT NULL,
    window_days int NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_type, entity_id, as_of_date, model_id)
);

-- 3. Captured price changes whose stored embeddings are still to be recomputed from prices_daily (at any
--    age). The relay queues a change in the transaction that marks it published; `seq` tells a change
--    queued again while it was being recomputed, so that recomputation never deletes the newer one.
CREATE SEQUENCE IF NOT EXISTS embedder_recompute_seq;
CREATE TABLE IF NOT EXISTS embedder_recompute_queue (
    instrument_id varchar(50) NOT NULL,
    trade_date date NOT NULL,
    seq bigint NOT NULL DEFAULT nextval('embedder_recompute_seq'),
    queued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instrument_id, trade_date)
);
CREATE INDEX IF NOT EXISTS embedder_recompute_queue_seq_idx ON embedder_recompute_queue (seq);

-- 4. Which format of stream state a worker group (app id) holds: a worker of another format rebuilds it.
CREATE TABLE IF NOT EXISTS embedder_state_format (
    app_id varchar(200) PRIMARY KEY,
    version int NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- 5. The worker's parity audit: each round, how many stored keys it recomputed and how many differed.
CREATE TABLE IF NOT EXISTS embedder_parity_audits (
    id bigserial PRIMARY KEY,
    checked_at timestamptz NOT NULL DEFAULT now(),
    source varchar(16) NOT NULL,
    keys_checked int NOT NULL,
    mismatches int NOT NULL,
    examples jsonb
);
CREATE INDEX IF NOT EXISTS embedder_parity_audits_time_idx ON embedder_parity_audits (checked_at);
