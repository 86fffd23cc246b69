"""`replay --direct`: stored bytes equal the plain-loop reference; reruns are idempotent."""

from __future__ import annotations

from datetime import date

import numpy as np
import psycopg
import pytest

from backfill.direct import run_direct
from backfill.selection import RunSelection
from tests.support.helpers import expected, load_synthetic, stored


def selection(**kw) -> RunSelection:
    base = dict(window_days=63, model_ids=["numeric-simple-v1"])
    base.update(kw)
    return RunSelection.build(**base)


def trade_dates(url: str, start: date, end: date) -> list[date]:
    with psycopg.connect(url) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT trade_date FROM prices_daily WHERE trade_date BETWEEN %s AND %s ORDER BY 1",
                (start, end),
            )
        ]


def market_ids(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT instrument_id FROM instruments ORDER BY 1")]


@pytest.mark.parametrize(
    "window_days,models", [(63, ["numeric-simple-v1", "num-regime-core-v1"]), (20, ["num-stab-core-v1"])]
)
def test_range_replay_equals_reference_byte_for_byte(db_url, tmp_path, window_days, models):
    load_synthetic(db_url, tmp_path, instruments=20)
    sel = selection(
        window_days=window_days, model_ids=models, date_from="2019-03-01", date_to="2019-06-30", market_id="US_EQ"
    )
    result = run_direct(db_url, sel, write_batch=500)
    dates = trade_dates(db_url, date(2019, 3, 1), date(2019, 6, 30))
    want = expected(db_url, market_ids(db_url), dates, window_days, models)
    got = stored(db_url)
    assert result.as_of_dates == len(dates) and result.instruments == 20
    assert result.embeddings == len(want) > 0
    assert result.insufficient == 20 * len(dates) - len(want) // len(models)
    assert got.keys() == want.keys()
    assert all(got[k] == want[k] for k in want)
    with psycopg.connect(db_url) as conn:
        specs = {r[0]["window_days"] for r in conn.execute("SELECT window_spec FROM numeric_window_embeddings")}
        assert specs == {window_days}
        assert conn.execute("SELECT DISTINCT entity_type FROM numeric_window_embeddings").fetchall() == [
            ("INSTRUMENT",)
        ]


def test_rerun_writes_no_duplicates_and_same_bytes(db_url, tmp_path):
    load_synthetic(db_url, tmp_path, instruments=8)
    sel = selection(date_from="2019-05-01", date_to="2019-05-31", market_id="US_EQ")
    run_direct(db_url, sel)
    first = stored(db_url)
    with psycopg.connect(db_url) as conn:
        ids_before = conn.execute("SELECT max(embedding_id), count(*) FROM numeric_window_embeddings").fetchone()
    run_direct(db_url, sel)
    with psycopg.connect(db_url) as conn:
        ids_after = conn.execute("SELECT max(embedding_id), count(*) FROM numeric_window_embeddings").fetchone()
    assert stored(db_url) == first
    assert ids_after[1] == ids_before[1] == len(first)


def test_limit_offset_cut_the_market_in_instrument_order(db_url, tmp_path):
    load_synthetic(db_url, tmp_path, instruments=10)
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE instruments SET status = 'DELISTED' WHERE instrument_id = 'SYN001'")
    result = run_direct(db_url, selection(as_of="2019-12-31", market_id="US_EQ", limit=3, offset=1))
    assert result.instruments == 3
    assert {k[0] for k in stored(db_url)} <= {"SYN002", "SYN003", "SYN004"}


def test_single_as_of_for_named_instruments(db_url, tmp_path):
    load_synthetic(db_url, tmp_path, instruments=5)
    sel = selection(
        as_of="2019-12-29", instrument_ids=["SYN000", "SYN002", "NOT-THERE"], model_ids=["num-regime-core-v1"]
    )
    result = run_direct(db_url, sel)
    got = stored(db_url)
    assert result.instruments == 3 and result.insufficient >= 1  # the unknown id has no history
    assert set(got) == set(expected(db_url, ["SYN000", "SYN002"], [date(2019, 12, 29)], 63, ["num-regime-core-v1"]))
    assert all(np.frombuffer(v, dtype="<f4").shape == (384,) for v in got.values())


def test_real_data_slice_equals_reference(real_db_url):
    ids = ["AAL", "AAPL", "CBS", "SNI", "ZTS"]
    sel = selection(
        date_from="2019-11-01",
        date_to="2020-01-10",
        instrument_ids=ids,
        model_ids=["numeric-simple-v1", "num-regime-core-v1"],
    )
    result = run_direct(real_db_url, sel)
    with psycopg.connect(real_db_url) as conn:
        dates = [
            r[0]
            for r in conn.execute(
                """SELECT DISTINCT trade_date FROM prices_daily WHERE instrument_id = ANY(%s)
               AND trade_date BETWEEN '2019-11-01' AND '2020-01-10' ORDER BY 1""",
                (ids,),
            )
        ]
    want = expected(real_db_url, ids, dates, 63, ["numeric-simple-v1", "num-regime-core-v1"])
    got = {k: v for k, v in stored(real_db_url).items() if k[0] in ids and k[1] in set(dates)}
    assert result.embeddings == len(want)
    assert got == want
