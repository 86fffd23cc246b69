"""Getting prices in and embeddings out in bulk: price import, the batch path, replay."""
