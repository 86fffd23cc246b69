-- depends: 0013_write_fencing
-- Issue 27: installing the embedder never gives the platform's own writers a new way to fail. The trigger
-- functions the project installs — capture on the platform's prices_daily, versions on
-- numeric_window_embeddings — ran with the privileges of whoever wrote the row, so a role that may write
-- prices_daily and nothing else failed with "permission denied for table embedder_capture". They now run
-- with the privileges of the role that installed them (the owner running `embedder db upgrade`), with a
-- search_path fixed to the schema they were installed in (then pg_temp, last), so no caller can redirect
-- the tables they name. Each does its one job: read the capture switch and append the changed keys; copy
-- the superseded rows into the versions. Nobody calls them directly: EXECUTE is revoked from PUBLIC.
DO $$
DECLARE
    schema_name text := current_schema();
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY[
        'embedder_capture_changed_keys()',
        'embedder_capture_updated_prices()',
        'embedder_keep_superseded_embeddings()',
        'embedder_keep_truncated_embeddings()'
    ] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp', fn, schema_name);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
    -- What those call: the same fixed search_path (they read the embedder's switches and settings).
    FOREACH fn IN ARRAY ARRAY[
        'embedder_capturing()',
        'embedder_keeping_history()',
        'embedder_change_cause()'
    ] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', fn, schema_name);
    END LOOP;
END $$;
