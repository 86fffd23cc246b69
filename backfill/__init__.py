"""Getting prices in and embeddings out in bulk: price import, the batch path, replay, and the database
paths that keep the table exact (corrections, verify, the parity audit). The live service is `live/`."""
