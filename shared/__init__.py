"""The contract every part of the embedder uses: encoder, settings, database access."""
