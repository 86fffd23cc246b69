"""Settings come from the environment; secrets never reach messages."""
from __future__ import annotations

from shared.config import Settings, redact_url, scrub_secret


def test_environment_names_and_defaults(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://a:b@db:5432/x")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("EMBEDDER_PARTITIONS", "12")
    s = Settings(_env_file=None)
    assert s.database_url == "postgresql://a:b@db:5432/x"
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert s.partitions == 12 and s.prices_topic == "embedder.prices"


def test_redaction():
    url = "postgresql://user:hunter2@host:5432/db"
    assert redact_url(url) == "postgresql://user:***@host:5432/db"
    assert redact_url("postgresql://host/db") == "postgresql://host/db"
    assert "hunter2" not in scrub_secret(f"failed for {url} with hunter2", url)
    assert scrub_secret("password=hunter2 near hunter2_table", url) == "password=*** near hunter2_table"
