-- depends: 0007_live_bootstrap
-- A replay of dates the live windows cover is answered from them: a tick of kind 'tick' with a run id
-- of its own (query_run) and the selection it covers, queued behind every captured row.
ALTER TABLE prices_outbox ADD COLUMN IF NOT EXISTS query_run varchar(64);
ALTER TABLE prices_outbox ADD COLUMN IF NOT EXISTS selection jsonb;
ALTER TABLE prices_outbox ADD COLUMN IF NOT EXISTS more_dates date[];
