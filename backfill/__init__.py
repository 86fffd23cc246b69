"""Getting prices in and embeddings out in bulk: price import, the batch path (`direct`), replay through
Kafka and the worker it starts, recompute and verify. The live service, its corrections and audit are
`live/`; nothing here imports it."""
