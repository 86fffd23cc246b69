"""The live service: capture relay (`relay`, `outbox`), housekeeping while idle (`housekeeping`), loading
history into the live windows (`bootstrap`), the capture switch (`capture`), daily ticks (`schedule`),
replays answered by the running worker (`queries`), the database path for corrections (`corrections`,
run in its own process by `correction_process`), the parity audit (`parity_audit`), `embedder live
repartition` (`repartition`), and the worker's composition (`service`)."""
