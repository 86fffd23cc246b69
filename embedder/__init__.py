"""The `embedder` command: CLI wiring and local development services."""
