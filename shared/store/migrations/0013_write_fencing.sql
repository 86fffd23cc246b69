-- depends: 0012_embedding_versions
-- Issue 26: writes that cannot go back in time. Every write of an embedding states what it was computed
-- from (`computed_from`, a *claim*: "every price change the relay published up to this position is in
-- the prices I read"), the store keeps it beside the row, and the upsert refuses, in the same statement,
-- to replace a row computed from newer prices with one computed from older. A frozen worker, a
-- re-delivered tick or a slow correction can then only lose (shared/write_claims.py says how claims
-- are made).

-- 1. The relay's rounds: the relay numbers each round (one at a time: a row lock), in the transaction
--    that queues the round's changes for the correction path, before it reads their rows. A reader of
--    prices_daily that reads this number first is sure to see every change of every round up to it.
CREATE TABLE IF NOT EXISTS embedder_relay_round (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    round bigint NOT NULL DEFAULT 0 CHECK (round >= 0)
);
INSERT INTO embedder_relay_round (round) VALUES (0) ON CONFLICT (singleton) DO NOTHING;

-- 2. The claim beside each stored row, and beside each key recorded absent. NULL: written before this
--    release or by another writer (plain SQL): older than any claim, so any project write may replace it.
ALTER TABLE numeric_window_embeddings ADD COLUMN IF NOT EXISTS computed_from bigint;
ALTER TABLE embedder_absent_embeddings ADD COLUMN IF NOT EXISTS computed_from bigint;

-- 3. Writes refused because the table held something computed from newer prices: counted per UTC day,
--    writer (the cause's kind) and database session (so two writers never wait for each other's count)
--    for `embedder status`, and as `embedder_writes_refused_total` in the worker. Never an error.
CREATE TABLE IF NOT EXISTS embedder_write_refusals (
    day date NOT NULL,
    writer varchar(32) NOT NULL,
    backend int NOT NULL,
    refused bigint NOT NULL DEFAULT 0,
    last_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, writer, backend)
);

-- 4. Counting refusals in the upsert itself: the fence's conflict clause calls this for each row it refuses
--    (and only then), so a refusal costs nothing more than the comparison that decides it.
CREATE OR REPLACE FUNCTION embedder_refused() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM set_config('embedder.refused',
                       (coalesce(nullif(current_setting('embedder.refused', true), ''), '0')::bigint + 1)::text, true);
    RETURN false;
END $$;

-- 5. The parity audit's sweep over the whole table: a shared cursor in key order (NULL: at the start),
--    moved by each round in the transaction that takes its keys, and how many passes completed.
CREATE TABLE IF NOT EXISTS embedder_parity_sweep (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    entity_id varchar(64),
    as_of_date date,
    model_id varchar(64),
    passes bigint NOT NULL DEFAULT 0,
    pass_started_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO embedder_parity_sweep (passes) VALUES (0) ON CONFLICT (singleton) DO NOTHING;
