"""The live service: capture relay (`relay`, `outbox`), housekeeping while idle (`housekeeping`), loading
history into the live windows (`bootstrap`), the capture switch (`capture`), daily ticks (`schedule`),
replays answered by the running worker (`queries`), and the worker's composition (`service`)."""
