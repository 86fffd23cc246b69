-- depends: 0006_run_offsets
-- The live service on an existing platform database (issue 11).

-- 1. A tick may cover one market; its completion keeps what it computed per source partition.
ALTER TABLE embedder_tick_commits ADD COLUMN IF NOT EXISTS scope varchar(50) NOT NULL DEFAULT '';
ALTER TABLE embedder_tick_commits ADD COLUMN IF NOT EXISTS insufficient int NOT NULL DEFAULT 0;
ALTER TABLE embedder_tick_commits ADD COLUMN IF NOT EXISTS missing_today int NOT NULL DEFAULT 0;
ALTER TABLE embedder_tick_commits DROP CONSTRAINT IF EXISTS embedder_tick_commits_pkey;
ALTER TABLE embedder_tick_commits ADD PRIMARY KEY (run_id, scope, source_partition, as_of_date);

-- 2. The outbox: ticks name their market; deletes (and the old key of an UPDATE that changes a key)
--    are captured as kind 'delete'; kind 'snapshot' loads instruments' history (embedder_bootstrap).
ALTER TABLE prices_outbox ADD COLUMN IF NOT EXISTS market_id varchar(50);

CREATE OR REPLACE FUNCTION embedder_capture_deleted_prices() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO prices_outbox (kind, instrument_id, trade_date)
    SELECT 'delete', instrument_id, trade_date FROM deleted_prices ORDER BY trade_date, instrument_id;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS embedder_capture_deleted_prices ON prices_daily;
CREATE TRIGGER embedder_capture_deleted_prices AFTER DELETE ON prices_daily
    REFERENCING OLD TABLE AS deleted_prices
    FOR EACH STATEMENT EXECUTE FUNCTION embedder_capture_deleted_prices();

CREATE OR REPLACE FUNCTION embedder_capture_updated_prices() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- An UPDATE that moves a row to another key deletes the old key.
    INSERT INTO prices_outbox (kind, instrument_id, trade_date)
    SELECT 'delete', o.instrument_id, o.trade_date
    FROM previous_prices o
    WHERE NOT EXISTS (SELECT 1 FROM updated_prices n
                      WHERE n.instrument_id = o.instrument_id AND n.trade_date = o.trade_date)
    ORDER BY o.trade_date, o.instrument_id;
    INSERT INTO prices_outbox (instrument_id, trade_date, close, volume)
    SELECT n.instrument_id, n.trade_date, n.close, n.volume
    FROM updated_prices n
    LEFT JOIN previous_prices o ON o.instrument_id = n.instrument_id AND o.trade_date = n.trade_date
    WHERE o.instrument_id IS NULL OR (o.close, o.volume) IS DISTINCT FROM (n.close, n.volume)
    ORDER BY n.trade_date, n.instrument_id;
    RETURN NULL;
END $$;

-- 3. Bootstrap of the live windows from prices_daily ("initial snapshot, then stream"): an instrument
--    is queued here with the outbox entry that loads its retained look-back; the relay reads its rows
--    when it reaches that entry, so the snapshot takes its place in the outbox's order.
CREATE TABLE IF NOT EXISTS embedder_bootstrap (
    instrument_id varchar(50) PRIMARY KEY,
    outbox_id bigint NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    rows int
);
CREATE INDEX IF NOT EXISTS embedder_bootstrap_outbox_idx ON embedder_bootstrap (outbox_id);

-- 4. Daily ticks without a human: at most one scheduled tick per market and day.
CREATE TABLE IF NOT EXISTS embedder_scheduled_ticks (
    market_id varchar(50) NOT NULL,
    as_of_date date NOT NULL,
    reason varchar(16) NOT NULL,
    instruments int NOT NULL DEFAULT 0,
    expected int NOT NULL DEFAULT 0,
    outbox_id bigint,
    queued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (market_id, as_of_date)
);
