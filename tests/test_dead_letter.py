"""Bad input on the prices topic goes to the dead-letter topic with its reason; the worker stays up."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from datetime import date, timedelta

import pytest
from kafka import KafkaConsumer, KafkaProducer

from backfill.replay import ReplayHooks, wait_for_run
from shared.broker.publisher import PricePublisher
from shared.broker.topics import ensure_topics
from shared.contract.config import Settings
from shared.contract.errors import EmbedderError
from shared.contract.messages import RowBatch, Tick
from tests.support.cli import settings_of


@pytest.mark.slow
def test_a_replay_fails_loudly_when_rows_published_before_a_tick_never_arrived(cli_env, db_url, tmp_path):
    env = cli_env | {"EMBEDDER_PARTITIONS": "1"}
    settings = settings_of(env)
    ensure_topics(settings)
    as_of = date(2020, 1, 31)
    rows = [("LOSTX", as_of - timedelta(days=k), 10.0 + k, 5.0) for k in range(3)]
    publisher = PricePublisher(settings)
    publisher.row_batch(0, RowBatch("replay-lost", 5, rows))
    publisher.tick(Tick(run="replay-lost", d=as_of, w=5, m=("numeric-simple-v1",), n=(5,)))  # claims 5 rows
    publisher.flush()
    publisher.close()
    worker = subprocess.Popen(
        EMBEDDER_WORKER + ["--no-capture", "--data-dir", str(tmp_path / "state")],
        env=env,
        stdout=open(tmp_path / "worker.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        with pytest.raises(EmbedderError, match="did not deliver 2 row"):
            wait_for_run(settings.database_url, "replay-lost", as_of, 1, ReplayHooks(), timeout=120)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


@pytest.mark.slow
def test_malformed_messages_are_dead_lettered_with_reasons(cli_env, kafka_bootstrap, tmp_path):
    tag = uuid.uuid4().hex[:8]
    env = cli_env | {
        "EMBEDDER_APP_ID": f"embedder-dlq-{tag}",
        "EMBEDDER_PRICES_TOPIC": f"dlq-{tag}.prices",
        "EMBEDDER_DEAD_LETTER_TOPIC": f"dlq-{tag}.dead",
        "EMBEDDER_PARTITIONS": "2",
    }
    settings = settings_of(env)
    ensure_topics(settings)
    bad = {
        b"not json at all": "not JSON",
        b"[1, 2]": "not a JSON object",
        b'{"k": "row", "d": "2020-01-02", "c": 1.0, "vol": 1.0}': "invalid field row.i",
        b'{"k": "row", "i": "X", "d": "2020-01-02", "c": 0, "vol": 1.0}': "non-positive close",
        b'{"k": "row", "i": "X", "d": "2020-01-02", "c": 5, "vol": -1}': "negative volume",
        b'{"k": "row", "i": "X", "d": "2020-99-02", "c": 5, "vol": 1}': "invalid field row.d",
        b'{"k": "teleport"}': "invalid field",
    }
    worker = subprocess.Popen(
        EMBEDDER_WORKER + ["--data-dir", str(tmp_path / "state")],
        env=env,
        stdout=open(tmp_path / "worker.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        for payload in bad:
            producer.send(settings.prices_topic, key=b"X", value=payload)
        producer.flush()
        producer.close()
        consumer = KafkaConsumer(
            settings.dead_letter_topic,
            bootstrap_servers=kafka_bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=90_000,
            group_id=f"check-{tag}",
        )
        seen = {}
        for msg in consumer:
            record = json.loads(msg.value)
            seen[record["payload"].encode()] = record["reason"]
            if len(seen) == len(bad):
                break
        consumer.close()
        assert seen.keys() == bad.keys()
        for payload, reason in bad.items():
            assert reason in seen[payload], (payload, seen[payload])
        assert worker.poll() is None  # the worker is still up
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


EMBEDDER_WORKER = [sys.executable, "-m", "embedder.cli", "worker"]


def test_a_replay_fails_loudly_when_an_earlier_tick_never_commits(db_url):
    """The last tick is in on every partition but one earlier tick never arrived: the replay names it
    instead of returning with a hole of embeddings."""
    import psycopg

    d1, d2, d3 = date(2020, 1, 2), date(2020, 1, 3), date(2020, 1, 6)
    commits = [(p, d) for d in (d1, d2, d3) for p in (0, 1) if (p, d) != (1, d2)]
    with psycopg.connect(db_url) as conn:
        conn.cursor().executemany(
            "INSERT INTO embedder_tick_commits (run_id, source_partition, as_of_date, embeddings) "
            "VALUES ('replay-hole', %s, %s, 3)",
            commits,
        )
    with pytest.raises(
        EmbedderError, match=r"1 tick\(s\) never committed \(first: the tick of 2020-01-03 on partition 1\)"
    ):
        wait_for_run(db_url, "replay-hole", d3, 2, ReplayHooks(), timeout=60, expected_ticks=6, settle=0.5)
    assert wait_for_run(db_url, "replay-hole", d3, 2, ReplayHooks(), timeout=60) == 15  # without the count: done


def test_a_complete_replay_does_not_fail_because_its_end_message_cannot_be_sent(db_url, caplog):
    """Every embedding is committed before the end message; a broker that is away then only warns."""
    import socket
    import time

    from backfill.replay import end_run

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(_env_file=None, database_url=db_url, kafka_bootstrap_servers=f"127.0.0.1:{port}")
    started = time.monotonic()
    end_run(settings, "replay-gone", patience=3.0)  # returns, does not raise
    assert time.monotonic() - started >= 2.0  # it retried before giving up
    assert "could not be sent to the worker" in caplog.text
