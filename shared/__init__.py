"""What every part of the embedder uses, by kind: `contract/` (what the parts agree on: encoder, models,
messages, settings, errors), `store/` (PostgreSQL, one module per table), `broker/` (Kafka). At the top,
process plumbing every command shares: metrics, logs, signal handling, background threads. Nothing here
imports `backfill`, `live`, `streams` or `embedder`."""
