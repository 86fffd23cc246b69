"""How a replay through the stream is answered while a live worker relays: a query tick reading the
worker's windows, or the look-back each partition reads from prices_daily; a worker from before the
second (its relay says so in its application name) gets a run of its own instead."""

from __future__ import annotations

from datetime import date

import psycopg
import pytest

from backfill.selection import RunSelection
from live.queries import live_can_answer
from live.relay import RELAY_LOCK, RelayHolder
from shared.contract.config import Settings
from shared.contract.models import DEFAULT_MODEL_ID

DAY = date(2019, 6, 28)


def answer_while_held_by(url: str, application: str | None):
    """live_can_answer for a 21-day window (the live windows are 63) while `application` holds the relay lock."""
    settings = Settings(_env_file=None, database_url=url)
    selection = RunSelection.build(
        window_days=21, model_ids=[DEFAULT_MODEL_ID], as_of=DAY.isoformat(), instrument_ids=["A"]
    )
    holder = psycopg.connect(url, autocommit=True)
    try:
        if application is not None:
            holder.execute("SELECT set_config('application_name', %s, false)", (application,))
            assert holder.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,)).fetchone()[0]
        with psycopg.connect(url) as conn:
            return live_can_answer(conn, settings, selection, ["A"], [DAY])
    finally:
        holder.close()


@pytest.mark.parametrize(
    "application, asked", [("embedder relay v2 db-host:41", True), ("embedder relay db-host:41", False)]
)
def test_only_a_worker_that_reads_look_backs_is_asked_to(db_url, application, asked):
    answer = answer_while_held_by(db_url, application)
    assert (answer.ok, answer.from_database) == (asked, asked)
    assert answer.reason == "the live windows are for window_days 63"


def test_no_relaying_worker_means_a_run_of_its_own(db_url):
    answer = answer_while_held_by(db_url, None)
    assert not answer.ok and answer.reason == "no worker relays the live run"


@pytest.mark.parametrize(
    "application, protocol",
    [
        ("embedder relay v2 host:1", 2),
        ("embedder relay host:1", 1),
        ("embedder relay v10 h:1", 10),
        ("embedder relay vx h:1", 1),
    ],
)
def test_the_relay_protocol_is_read_from_its_application_name(application, protocol):
    assert RelayHolder(1, application, None, None).protocol == protocol
