-- depends: 0009_exact_table
-- Capture that costs the platform little (issue 17).

-- 1. Key-only capture. A statement's changed keys become one `keys` entry per set of instruments that
--    changed on the same dates: the keys are instrument_ids x trade_dates (a day of 5,000 instruments
--    is one entry, a bulk COPY of history a few). The relay reads the rows of those keys from
--    prices_daily when it publishes them (a key with no row any more is published as a deletion), as
--    DBLog does: the outbox says *what* changed, the table says what it is now.
ALTER TABLE prices_outbox ADD COLUMN IF NOT EXISTS instrument_ids text[];
ALTER TABLE prices_outbox ADD COLUMN IF NOT EXISTS trade_dates date[];

-- Every captured (instrument, date) of the outbox, whatever the entry's format: `row` and `delete`
-- entries of earlier releases (and of dead-letter re-drives) carry one key, `keys` entries many.
CREATE OR REPLACE VIEW embedder_outbox_changes AS
    SELECT o.id, o.instrument_id, o.trade_date, o.published_at
    FROM prices_outbox o WHERE o.kind IN ('row', 'delete')
    UNION ALL
    SELECT o.id, i.instrument_id, d.trade_date, o.published_at
    FROM prices_outbox o
    CROSS JOIN LATERAL unnest(o.instrument_ids) AS i(instrument_id)
    CROSS JOIN LATERAL unnest(o.trade_dates) AS d(trade_date)
    WHERE o.kind = 'keys';

-- 2. Nothing captured for nobody. Capture is on only while the live service is enabled: a worker
--    relaying the outbox turns it on (`embedder live capture --on` too) and keeps `relay_seen_at`
--    fresh; after `idle_hours` without a relay it stops by itself (NULL: never), and so does
--    `embedder live capture --off`. A worker that turns it on again after such a gap rebuilds the
--    live windows and rechecks every maintained key from prices_daily (backfill/capture.py).
CREATE TABLE IF NOT EXISTS embedder_capture (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    enabled boolean NOT NULL DEFAULT false,
    idle_hours float8,
    relay_seen_at timestamptz,
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text
);
-- Off after the upgrade, also where a live service ran before: a worker of the previous release still
-- relaying would not understand `keys` entries (it would dead-letter them as rows without an id). Off,
-- nothing is captured until a worker of this release takes the relay lock; it then resyncs from
-- prices_daily (windows and every maintained key), so nothing written meanwhile is missed.
INSERT INTO embedder_capture (enabled, idle_hours, relay_seen_at, changed_by)
VALUES (false, 72, NULL, 'migration 0010 (the next worker resyncs)')
ON CONFLICT (singleton) DO NOTHING;

-- plpgsql, not sql: its plan is cached, where a non-inlined SQL function is planned on every call
-- (measured: 40 us more per captured statement).
CREATE OR REPLACE FUNCTION embedder_capturing() RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce((SELECT enabled AND (idle_hours IS NULL
                                         OR relay_seen_at >= now() - make_interval(secs => idle_hours * 3600))
                     FROM embedder_capture), false);
END $$;

-- 3. The triggers: one statement-level INSERT of grouped keys, skipped whole when capture is off.
-- INSERT and DELETE: every key of the statement's rows (one function; both triggers name their
-- transition table `changed_prices`).
CREATE OR REPLACE FUNCTION embedder_capture_changed_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT embedder_capturing() THEN
        RETURN NULL;
    END IF;
    INSERT INTO prices_outbox (kind, instrument_ids, trade_dates)
    SELECT 'keys', array_agg(instrument_id), trade_dates
    FROM (SELECT instrument_id, array_agg(trade_date) AS trade_dates FROM changed_prices GROUP BY instrument_id) k
    GROUP BY trade_dates;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS embedder_capture_inserted_prices ON prices_daily;
CREATE TRIGGER embedder_capture_inserted_prices AFTER INSERT ON prices_daily
    REFERENCING NEW TABLE AS changed_prices
    FOR EACH STATEMENT EXECUTE FUNCTION embedder_capture_changed_keys();
DROP TRIGGER IF EXISTS embedder_capture_deleted_prices ON prices_daily;
CREATE TRIGGER embedder_capture_deleted_prices AFTER DELETE ON prices_daily
    REFERENCING OLD TABLE AS changed_prices
    FOR EACH STATEMENT EXECUTE FUNCTION embedder_capture_changed_keys();
DROP FUNCTION IF EXISTS embedder_capture_inserted_prices();
DROP FUNCTION IF EXISTS embedder_capture_deleted_prices();

-- An UPDATE changes the keys whose close or volume changed, and the old key of a row moved to another.
CREATE OR REPLACE FUNCTION embedder_capture_updated_prices() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT embedder_capturing() THEN
        RETURN NULL;
    END IF;
    INSERT INTO prices_outbox (kind, instrument_ids, trade_dates)
    SELECT 'keys', array_agg(instrument_id), trade_dates
    FROM (SELECT instrument_id, array_agg(trade_date) AS trade_dates
          FROM (SELECT o.instrument_id, o.trade_date FROM previous_prices o
                WHERE NOT EXISTS (SELECT 1 FROM updated_prices n
                                  WHERE n.instrument_id = o.instrument_id AND n.trade_date = o.trade_date)
                UNION
                SELECT n.instrument_id, n.trade_date FROM updated_prices n
                LEFT JOIN previous_prices o ON o.instrument_id = n.instrument_id AND o.trade_date = n.trade_date
                WHERE o.instrument_id IS NULL OR (o.close, o.volume) IS DISTINCT FROM (n.close, n.volume)) changed
          GROUP BY instrument_id) k
    GROUP BY trade_dates;
    RETURN NULL;
END $$;

-- 4. A resync's snapshots also delete what the live windows may hold that prices_daily no longer has.
ALTER TABLE embedder_bootstrap ADD COLUMN IF NOT EXISTS resync boolean NOT NULL DEFAULT false;
