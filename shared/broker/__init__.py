"""Kafka: client settings, topics, publishing, retries and refusals, consumer lag, dead letters."""
