-- depends: 0011_live_layout
-- Issue 19: every embedding as it was known. A change of a stored embedding (new bytes for its key, its
-- removal, a TRUNCATE) keeps the superseded row here, with the interval in which it was current and its
-- cause, written by triggers in the changing transaction: whatever writes the table (the sink, the batch
-- path, the correction path, `verify --repair`, the platform's own SQL) is caught, and no instant has
-- neither version visible. Identical rewrites change no row (the project's upsert skips them; a plain
-- UPDATE that sets the same values is compared here), so they keep no version.
--
-- Times are transaction start times (`now()`): a version was current in [recorded_from, recorded_to).
-- The current row of a key has been current since greatest(its created_at, the newest recorded_to of its
-- key): an UPDATE keeps created_at, a row deleted and written again gets a new one.
CREATE TABLE IF NOT EXISTS numeric_window_embedding_versions (
    version_id bigserial PRIMARY KEY,
    entity_type varchar(32) NOT NULL,
    entity_id varchar(64) NOT NULL,
    as_of_date date NOT NULL,
    model_id varchar(64) NOT NULL,
    window_spec jsonb,
    vector bytea,
    vector_ref varchar(255),
    recorded_from timestamptz NOT NULL,
    recorded_to timestamptz NOT NULL,
    change varchar(8) NOT NULL CHECK (change IN ('update', 'delete', 'truncate', 'absent')),
    -- 'absent' marks "no row before recorded_to" for the key an UPDATE moved a row to (no vector).
    cause_kind varchar(32) NOT NULL,
    cause text NOT NULL
);
CREATE INDEX IF NOT EXISTS numeric_window_embedding_versions_key_idx
    ON numeric_window_embedding_versions (entity_type, entity_id, as_of_date, model_id, recorded_to);
CREATE INDEX IF NOT EXISTS numeric_window_embedding_versions_date_idx
    ON numeric_window_embedding_versions (model_id, as_of_date);
CREATE INDEX IF NOT EXISTS numeric_window_embedding_versions_recorded_idx
    ON numeric_window_embedding_versions (recorded_to);

-- On by default. Off (`embedder embeddings keep-history --off`) the triggers keep nothing, and reads as
-- known at an instant are refused until it is on again: `complete_since` is when the versions kept
-- became complete (the install, turning it on again, or the retention horizon after a prune).
CREATE TABLE IF NOT EXISTS embedder_history (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    enabled boolean NOT NULL DEFAULT true,
    complete_since timestamptz NOT NULL DEFAULT now(),
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text
);
INSERT INTO embedder_history (enabled, changed_by) VALUES (true, 'migration 0012')
ON CONFLICT (singleton) DO NOTHING;

CREATE OR REPLACE FUNCTION embedder_keeping_history() RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce((SELECT enabled FROM embedder_history), false);
END $$;

-- Why the current transaction changes embeddings: the project's writers set `embedder.cause`
-- ("kind: detail", transaction-local); any other writer is named by its role and application.
CREATE OR REPLACE FUNCTION embedder_change_cause() RETURNS text LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce(nullif(current_setting('embedder.cause', true), ''),
                    'sql: ' || session_user || coalesce(' (' || nullif(current_setting('application_name', true), '') || ')', ''));
END $$;

CREATE OR REPLACE FUNCTION embedder_keep_superseded_embeddings() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    why text;
BEGIN
    -- Most statements change nothing here (an upsert whose rows are new or identical): leave before
    -- planning the copies below (measured: 7 ms of a 475-row sink transaction).
    IF NOT embedder_keeping_history() OR NOT EXISTS (SELECT 1 FROM superseded_embeddings) THEN
        RETURN NULL;
    END IF;
    why := embedder_change_cause();
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO numeric_window_embedding_versions
            (entity_type, entity_id, as_of_date, model_id, window_spec, vector, vector_ref, recorded_from,
             recorded_to, change, cause_kind, cause)
        SELECT o.entity_type, o.entity_id, o.as_of_date, o.model_id, o.window_spec, o.vector, o.vector_ref,
               least(greatest(o.created_at, s.since), now()), now(), 'update', split_part(why, ':', 1), why
        FROM superseded_embeddings o JOIN current_embeddings n ON n.embedding_id = o.embedding_id
        LEFT JOIN LATERAL (SELECT max(v.recorded_to) AS since FROM numeric_window_embedding_versions v
                           WHERE v.entity_type = o.entity_type AND v.entity_id = o.entity_id
                             AND v.as_of_date = o.as_of_date AND v.model_id = o.model_id) s ON true
        WHERE (o.entity_type, o.entity_id, o.as_of_date, o.model_id, o.window_spec, o.vector, o.vector_ref)
              IS DISTINCT FROM (n.entity_type, n.entity_id, n.as_of_date, n.model_id, n.window_spec, n.vector, n.vector_ref);
        -- A row moved to another key: that key had no row before now.
        INSERT INTO numeric_window_embedding_versions
            (entity_type, entity_id, as_of_date, model_id, recorded_from, recorded_to, change, cause_kind, cause)
        SELECT n.entity_type, n.entity_id, n.as_of_date, n.model_id, '-infinity', now(), 'absent',
               split_part(why, ':', 1), why
        FROM superseded_embeddings o JOIN current_embeddings n ON n.embedding_id = o.embedding_id
        WHERE (o.entity_type, o.entity_id, o.as_of_date, o.model_id)
              IS DISTINCT FROM (n.entity_type, n.entity_id, n.as_of_date, n.model_id);
    ELSE
        INSERT INTO numeric_window_embedding_versions
            (entity_type, entity_id, as_of_date, model_id, window_spec, vector, vector_ref, recorded_from,
             recorded_to, change, cause_kind, cause)
        SELECT o.entity_type, o.entity_id, o.as_of_date, o.model_id, o.window_spec, o.vector, o.vector_ref,
               least(greatest(o.created_at, s.since), now()), now(), 'delete', split_part(why, ':', 1), why
        FROM superseded_embeddings o
        LEFT JOIN LATERAL (SELECT max(v.recorded_to) AS since FROM numeric_window_embedding_versions v
                           WHERE v.entity_type = o.entity_type AND v.entity_id = o.entity_id
                             AND v.as_of_date = o.as_of_date AND v.model_id = o.model_id) s ON true;
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS embedder_keep_updated_embeddings ON numeric_window_embeddings;
CREATE TRIGGER embedder_keep_updated_embeddings AFTER UPDATE ON numeric_window_embeddings
    REFERENCING OLD TABLE AS superseded_embeddings NEW TABLE AS current_embeddings
    FOR EACH STATEMENT EXECUTE FUNCTION embedder_keep_superseded_embeddings();
DROP TRIGGER IF EXISTS embedder_keep_deleted_embeddings ON numeric_window_embeddings;
CREATE TRIGGER embedder_keep_deleted_embeddings AFTER DELETE ON numeric_window_embeddings
    REFERENCING OLD TABLE AS superseded_embeddings
    FOR EACH STATEMENT EXECUTE FUNCTION embedder_keep_superseded_embeddings();

-- TRUNCATE fires no row triggers: every row is kept before it goes.
CREATE OR REPLACE FUNCTION embedder_keep_truncated_embeddings() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    why text;
BEGIN
    IF NOT embedder_keeping_history() THEN
        RETURN NULL;
    END IF;
    why := embedder_change_cause();
    INSERT INTO numeric_window_embedding_versions
        (entity_type, entity_id, as_of_date, model_id, window_spec, vector, vector_ref, recorded_from,
         recorded_to, change, cause_kind, cause)
    SELECT o.entity_type, o.entity_id, o.as_of_date, o.model_id, o.window_spec, o.vector, o.vector_ref,
           least(greatest(o.created_at, s.since), now()), now(), 'truncate', split_part(why, ':', 1), why
    FROM numeric_window_embeddings o
    LEFT JOIN (SELECT entity_type, entity_id, as_of_date, model_id, max(recorded_to) AS since
               FROM numeric_window_embedding_versions GROUP BY 1, 2, 3, 4) s
        ON s.entity_type = o.entity_type AND s.entity_id = o.entity_id AND s.as_of_date = o.as_of_date
       AND s.model_id = o.model_id;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS embedder_keep_truncated_embeddings ON numeric_window_embeddings;
CREATE TRIGGER embedder_keep_truncated_embeddings BEFORE TRUNCATE ON numeric_window_embeddings
    FOR EACH STATEMENT EXECUTE FUNCTION embedder_keep_truncated_embeddings();
