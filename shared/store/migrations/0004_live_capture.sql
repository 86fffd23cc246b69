-- depends: 0003_stream_progress
-- Live capture: every insert or change of a price (and every tick) goes to an outbox in the same
-- transaction; the worker's relay publishes it in id order and marks rows only after Kafka acks.
CREATE TABLE IF NOT EXISTS prices_outbox (
    id bigserial PRIMARY KEY,
    kind varchar(8) NOT NULL DEFAULT 'row',
    instrument_id varchar(50),
    trade_date date,
    close float8,
    volume float8,
    window_days int,
    model_ids text[],
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS prices_outbox_unpublished_idx ON prices_outbox (id) WHERE published_at IS NULL;

CREATE OR REPLACE FUNCTION embedder_capture_inserted_prices() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO prices_outbox (instrument_id, trade_date, close, volume)
    SELECT instrument_id, trade_date, close, volume FROM inserted_prices ORDER BY trade_date, instrument_id;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION embedder_capture_updated_prices() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO prices_outbox (instrument_id, trade_date, close, volume)
    SELECT n.instrument_id, n.trade_date, n.close, n.volume
    FROM updated_prices n
    LEFT JOIN previous_prices o ON o.instrument_id = n.instrument_id AND o.trade_date = n.trade_date
    WHERE o.instrument_id IS NULL OR (o.close, o.volume) IS DISTINCT FROM (n.close, n.volume)
    ORDER BY n.trade_date, n.instrument_id;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS embedder_capture_inserted_prices ON prices_daily;
CREATE TRIGGER embedder_capture_inserted_prices AFTER INSERT ON prices_daily
    REFERENCING NEW TABLE AS inserted_prices
    FOR EACH STATEMENT EXECUTE FUNCTION embedder_capture_inserted_prices();

DROP TRIGGER IF EXISTS embedder_capture_updated_prices ON prices_daily;
CREATE TRIGGER embedder_capture_updated_prices AFTER UPDATE ON prices_daily
    REFERENCING OLD TABLE AS previous_prices NEW TABLE AS updated_prices
    FOR EACH STATEMENT EXECUTE FUNCTION embedder_capture_updated_prices();

-- Replays record themselves here; the sink ignores re-delivered messages of completed runs.
CREATE TABLE IF NOT EXISTS embedder_runs (
    run_id varchar(64) PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
