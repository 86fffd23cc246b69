"""`shared.broker.kafka_retry.with_retries`: one line when Kafka stops answering and one when it answers again; a new
broker's coordinator start is said calmly (info), a lost broker as a warning; the deadline raises the last
error; a refusal is not retried."""

from __future__ import annotations

import logging

import pytest
from kafka.errors import CoordinatorNotAvailableError, KafkaConnectionError

from shared.broker.kafka_retry import with_retries


def failing(times: int, error: Exception):
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return "answer"

    return call, calls


def test_a_new_brokers_coordinator_start_is_said_calmly(caplog):
    call, calls = failing(2, CoordinatorNotAvailableError("[Error 15] CoordinatorNotAvailableError"))
    with caplog.at_level(logging.INFO, logger="embedder.kafka"):
        assert with_retries("looking for a worker", call, first_delay=0.01) == "answer"
    assert calls["n"] == 3
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]
    assert "group coordinator is starting (normal for a new broker)" in caplog.records[0].getMessage()
    assert "Error 15" not in caplog.text


def test_a_lost_broker_is_one_warning_then_one_when_it_answers_again(caplog):
    call, calls = failing(3, KafkaConnectionError("connection refused"))
    with caplog.at_level(logging.INFO, logger="embedder.kafka"):
        assert with_retries("describing groups", call, first_delay=0.01) == "answer"
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert "did not answer (KafkaConnectionError: connection refused)" in caplog.records[0].getMessage()
    assert "answers again" in caplog.records[1].getMessage() and "(4 attempts)" in caplog.records[1].getMessage()


def test_the_deadline_raises_the_last_error(caplog):
    call, calls = failing(1000, KafkaConnectionError("connection refused"))
    with pytest.raises(KafkaConnectionError), caplog.at_level(logging.INFO, logger="embedder.kafka"):
        with_retries("describing groups", call, deadline_seconds=0.2, first_delay=0.05, max_delay=0.05)
    assert 2 <= calls["n"] <= 6
    assert caplog.records[-1].levelno == logging.ERROR and "did not answer for" in caplog.records[-1].getMessage()
