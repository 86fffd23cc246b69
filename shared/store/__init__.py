"""PostgreSQL: connections, the schema's migrations and grants, and one module per table or view the
embedder reads or writes (embeddings, their history and reads, maintained keys, instruments, prices, layout,
write claims, tick commits)."""
