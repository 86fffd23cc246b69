"""Issue 19's acceptance with the live service: the table captured at T, then corrections of old rows
through the worker and a `verify --repair`; read as known at T it is the captured copy byte for byte,
and now it is the reference over the corrected prices. Re-running a replay and ticking a day again keep
no version; the platform's own SQL does. Real PostgreSQL, Kafka and worker."""

from __future__ import annotations

from datetime import date

import numpy as np
import psycopg
import pytest

from embedder import read_embeddings
from tests.support.cli import run
from tests.support.helpers import expected, stored, wait_for
from tests.support.markets import MODELS, instant, live_market
from tests.support.workers import live_tick_committed, start_live_worker, stop, tick_live

MARCH = ("2019-03-01", "2019-03-29")


def read_all(url: str, known_at=None) -> dict[tuple, bytes]:
    out = {}
    for model in MODELS:
        e = read_embeddings(model, date_from="2019-01-01", date_to="2019-12-31", database_url=url, known_at=known_at)
        out.update(
            {(i, d.astype(object), model): v.tobytes() for i, d, v in zip(e.instrument_ids, e.as_of_dates, e.vectors)}
        )
    return out


def kept(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT cause_kind, change FROM numeric_window_embedding_versions ORDER BY version_id"
        ).fetchall()


@pytest.mark.slow
def test_the_table_as_known_before_corrections_through_the_live_service_and_a_repair(db_url, cli_env, tmp_path):
    ids, days = live_market(db_url, tmp_path)
    models = [flag for m in MODELS for flag in ("--model-id", m)]
    with psycopg.connect(db_url) as conn:
        march = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT trade_date FROM prices_daily WHERE trade_date BETWEEN %s AND %s ORDER BY 1", MARCH
            )
        ]
    worker = start_live_worker(cli_env, tmp_path)
    try:
        tick_live(cli_env, db_url, days)
        run(cli_env, "replay", "--direct", "--from", MARCH[0], "--to", MARCH[1], "--market-id", "US_EQ", *models)
        captured = stored(db_url)
        assert len(captured) > 250 and read_all(db_url) == captured
        known = instant(db_url)

        # Running things again keeps no version: the batch path over March, and the last day ticked again.
        run(cli_env, "replay", "--direct", "--from", MARCH[0], "--to", MARCH[1], "--market-id", "US_EQ", *models)
        with psycopg.connect(db_url) as conn:
            conn.execute("DELETE FROM embedder_tick_commits WHERE run_id = 'live' AND as_of_date = %s", (days[-1],))
        run(cli_env, "tick", "--as-of", days[-1].isoformat(), *models)
        wait_for(lambda: live_tick_committed(db_url, days[-1], int(cli_env["EMBEDDER_PARTITIONS"])), 120, "the tick")
        assert kept(db_url) == [] and stored(db_url) == captured

        # Corrections of old rows through the live service: one under March's embeddings (the database
        # path recomputes them), one inside the live windows (the stream re-emits).
        with psycopg.connect(db_url) as conn:
            for instrument_id, before in (("SYN001", date(2019, 3, 12)), ("SYN002", days[2])):
                assert (
                    conn.execute(
                        """UPDATE prices_daily SET close = close * 1.07 WHERE instrument_id = %s
                       AND trade_date = (SELECT max(trade_date) FROM prices_daily
                                         WHERE instrument_id = %s AND trade_date <= %s)""",
                        (instrument_id, instrument_id, before),
                    ).rowcount
                    == 1
                )
        want = expected(db_url, ids, march, 63, MODELS) | expected(db_url, ids, days, 63, MODELS)
        changed = {k for k in want if want[k] != captured.get(k)}
        assert {k[0] for k in changed} == {"SYN001", "SYN002"}
        wait_for(lambda: stored(db_url) == want, 180, "the corrected embeddings")

        # Someone overwrites a vector by hand; `verify --repair` puts the reference back.
        key = sorted(want)[0]
        with psycopg.connect(db_url) as conn:
            conn.execute(
                """UPDATE numeric_window_embeddings SET vector = %s
                            WHERE entity_id = %s AND as_of_date = %s AND model_id = %s""",
                (np.zeros(len(want[key]) // 4, dtype="<f4").tobytes(), *key),
            )
        run(cli_env, "verify", "--from", MARCH[0], "--to", days[-1].isoformat(), "--repair")  # the stored keys
        assert stored(db_url) == want

        assert read_all(db_url, known_at=known) == captured  # byte for byte, as it was
        assert read_all(db_url) == want
        causes = kept(db_url)
        assert {("correction", "update"), ("sql", "update"), ("repair", "update")} <= set(causes)
        assert len(causes) == len(changed) + 2  # each corrected key once, the hand edit, its repair
    finally:
        stop(worker)
