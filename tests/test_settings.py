"""Settings come from the environment; secrets never reach messages."""

from __future__ import annotations

import os

from shared.contract.config import Settings, redact_url, scrub_secret


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


def test_repeated_client_log_lines_are_shown_once_a_minute_with_a_count():
    """A Kafka client reconnecting to a lost broker every 0.1 s logs a line a minute, then says how many
    similar lines it held back."""
    import logging

    from shared.logs import RepeatFilter

    clock = {"now": 0.0}
    repeat = RepeatFilter(window=60.0, clock=lambda: clock["now"])

    def record(msg: str, *args) -> logging.LogRecord:
        return logging.LogRecord("kafka.net.manager", logging.ERROR, __file__, 1, msg, args, None)

    shown = []
    for k in range(600):  # a minute of attempts, every 0.1 s, naming ports and attempt numbers
        clock["now"] = k * 0.1
        r = record(f"Connection failed to node 2 at 127.0.0.1:2929{k % 3} (attempt {k})")
        if repeat.filter(r):
            shown.append(r.getMessage())
    assert shown == ["Connection failed to node 2 at 127.0.0.1:29290 (attempt 0)"]
    clock["now"] = 61.0
    r = record("Connection failed to node 2 at 127.0.0.1:29291 (attempt 610)")
    assert repeat.filter(r) and r.getMessage().endswith("(599 similar line(s) in the last 60 s not shown)")
    assert repeat.filter(record("Connection lost to node 3"))  # another message is shown at once


def test_a_child_process_gets_every_setting_through_its_environment(monkeypatch):
    """`worker_env` hands a worker started for a run the whole settings object, not a hand-picked part."""
    from backfill.worker_process import worker_env

    monkeypatch.setenv(
        "EMBEDDER_TICK_SCHEDULE", '[{"market_id": "US_EQ", "deadline": "18:30", "timezone": "Asia/Tokyo"}]'
    )
    parent = Settings(
        _env_file=None,
        live_model_ids=("numeric-simple-v1",),
        kafka_sasl_password="s3cret",
        partitions=4,
        version_retention_days=3.5,
        parity_repair=False,
        state_dir="elsewhere",
        sink_batch_seconds=0.5,
    )
    monkeypatch.delenv("EMBEDDER_TICK_SCHEDULE")
    env = worker_env(parent)
    for key in [k for k in os.environ if k.startswith("EMBEDDER_") or k in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    child = Settings(_env_file=None)
    assert child.model_copy(update={"web_port": parent.web_port}) == parent and child.web_port == 0
