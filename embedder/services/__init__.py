"""Local single-node Kafka and PostgreSQL for development, demos and CI (no Docker)."""
