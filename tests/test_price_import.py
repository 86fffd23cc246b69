"""`embedder prices import`: layouts, validation, last-valid-wins, idempotency and the real data set."""

from __future__ import annotations

import gzip
from datetime import date
from pathlib import Path

import psycopg
import pytest

from backfill.price_import import import_prices
from tests.conftest import REAL_DATA


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def prices(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            """SELECT instrument_id, trade_date, open, high, low, close, adjusted_close, volume, currency
               FROM prices_daily ORDER BY 1, 2"""
        ).fetchall()


def test_yahoo_layout_gz_with_rejects_and_last_valid_row_wins(db_url, tmp_path):
    f = write(
        tmp_path / "y.csv.gz",
        "\n".join(
            [
                "Date,High,Low,Open,Close,Volume,Adj Close,Name",
                "2020-01-02,11,9,10,10.5,1000,10.4,AAA",
                "2020-01-03,12,10,11,11.5,0,11.4,AAA",
                "2020-01-03,12,10,11,11.75,2000,11.6,AAA",  # repeat: this one wins
                "2020-01-06,12,10,11,0.0,0,0,AAA",  # non-positive close: rejected
                "2020-01-06,12,10,11,nan,100,11,BBB",  # non-finite: rejected
                "2020-01-07,12,10,11,,100,11,BBB",  # missing: rejected
                "2020-01-08,12,10,11,inf,100,11,BBB",  # non-finite: rejected
                "2020-13-08,12,10,11,11,100,11,BBB",  # bad date: rejected
                "2020-01-09,12,10,11,11,-5,11,BBB",  # negative volume: rejected
                "2020-01-10,12,10,11,11,5,11,BBB",
            ]
        )
        + "\n",
    )
    result = import_prices(db_url, [f])
    assert result.rows == 10 and result.inserted == 3 and result.new_instruments == 2
    assert result.rejected == {
        "non-positive close": 1,
        "non-finite value": 2,
        "missing value": 1,
        "bad date": 1,
        "negative volume": 1,
    }
    assert prices(db_url) == [
        ("AAA", date(2020, 1, 2), 10.0, 11.0, 9.0, 10.5, 10.4, 1000.0, "USD"),
        ("AAA", date(2020, 1, 3), 11.0, 12.0, 10.0, 11.75, 11.6, 2000.0, "USD"),
        ("BBB", date(2020, 1, 10), 11.0, 12.0, 10.0, 11.0, 11.0, 5.0, "USD"),
    ]
    with psycopg.connect(db_url) as conn:
        assert conn.execute(
            "SELECT instrument_id, market_id, asset_class, symbol, currency, status FROM instruments ORDER BY 1"
        ).fetchall() == [
            ("AAA", "US_EQ", "EQUITY", "AAA", "USD", "ACTIVE"),
            ("BBB", "US_EQ", "EQUITY", "BBB", "USD", "ACTIVE"),
        ]
    again = import_prices(db_url, [f])
    assert (again.inserted, again.updated, again.unchanged, again.new_instruments) == (0, 0, 3, 0)


def test_kaggle_layout_and_column_order_and_currency(db_url, tmp_path):
    f = write(tmp_path / "k.csv", "volume,Name,close,low,high,open,date\n500,KKK,20.5,19,21,20,2021-05-03\n")
    result = import_prices(db_url, [f], market_id="EU_EQ", currency="EUR")
    assert result.inserted == 1
    assert prices(db_url) == [("KKK", date(2021, 5, 3), 20.0, 21.0, 19.0, 20.5, 20.5, 500.0, "EUR")]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT market_id FROM instruments").fetchone()[0] == "EU_EQ"


def test_per_ticker_file_takes_symbol_from_file_name(db_url, tmp_path):
    f = write(tmp_path / "MSFT.csv", "Date,Open,High,Low,Close,Adj Close,Volume\n2020-01-02,1,2,0.5,1.5,1.4,77\n")
    import_prices(db_url, [f])
    assert prices(db_url)[0][:2] == ("MSFT", date(2020, 1, 2))


def test_own_layout_updates_a_changed_row_and_maps_symbols_to_existing_ids(db_url, tmp_path):
    with psycopg.connect(db_url) as conn:
        conn.execute("""INSERT INTO instruments (instrument_id, market_id, asset_class, symbol, currency)
                        VALUES ('AAPL.US', 'US_EQ', 'EQUITY', 'AAPL', 'USD')""")
    yahoo = write(
        tmp_path / "a.csv", "Date,High,Low,Open,Close,Volume,Adj Close,Name\n2020-01-02,2,1,1.5,1.6,10,1.6,AAPL\n"
    )
    r1 = import_prices(db_url, [yahoo])
    assert r1.new_instruments == 0 and prices(db_url)[0][0] == "AAPL.US"
    own = write(
        tmp_path / "own.csv",
        "instrument_id,trade_date,open,high,low,close,adjusted_close,volume,currency,metadata\n"
        'AAPL.US,2020-01-02,1.5,2,1,1.7,1.7,10,USD,"{""source"": ""fix""}"\n',
    )
    r2 = import_prices(db_url, [own])
    assert (r2.inserted, r2.updated) == (0, 1)
    assert prices(db_url)[0][5] == 1.7


def test_missing_required_column_is_a_bad_argument(db_url, tmp_path):
    from shared.contract.errors import BadArguments

    f = write(tmp_path / "bad.csv", "Date,Open,High,Close,Name\n2020-01-02,1,2,1.5,X\n")
    with pytest.raises(BadArguments, match="no column for low, volume"):
        import_prices(db_url, [f])
    assert prices(db_url) == []


def test_real_data_set_loads_with_known_counts_and_values(real_db_url):
    with psycopg.connect(real_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM prices_daily").fetchone()[0] == 592_355  # 3 repeated keys
        assert conn.execute("SELECT count(*) FROM instruments WHERE market_id = 'US_EQ'").fetchone()[0] == 482
        assert conn.execute("SELECT min(trade_date), max(trade_date) FROM prices_daily").fetchone() == (
            date(2015, 1, 12),
            date(2020, 1, 10),
        )
        aal = conn.execute("""SELECT open, high, low, close, adjusted_close, volume FROM prices_daily
                              WHERE instrument_id = 'AAL' AND trade_date = '2015-01-12'""").fetchone()
        assert aal == (
            51.060001373291016,
            51.45000076293945,
            49.20000076293945,
            49.58000183105469,
            47.15082550048828,
            18261300.0,
        )
        # CBS 2019-12-04 appears twice; the second copy has a zero close and is rejected.
        assert (
            conn.execute("""SELECT close FROM prices_daily WHERE instrument_id = 'CBS'
                               AND trade_date = '2019-12-04'""").fetchone()[0]
            == 40.77000045776367
        )
        # STI 2019-12-06 appears twice with different volumes; the last one wins.
        assert (
            conn.execute("""SELECT volume FROM prices_daily WHERE instrument_id = 'STI'
                               AND trade_date = '2019-12-06'""").fetchone()[0]
            == 18980771.0
        )
        assert conn.execute("SELECT count(*) FROM prices_daily WHERE volume = 0").fetchone()[0] > 100


def test_reimporting_real_data_changes_nothing(real_db_url):
    result = import_prices(real_db_url, [REAL_DATA])
    assert (result.inserted, result.updated, result.new_instruments) == (0, 0, 0)
    assert result.rejected == {"non-positive close": 1}


def test_a_future_trade_date_is_rejected_with_the_reason_the_stream_gives_it(db_url, tmp_path):
    """One rule (shared/contract/validation.py) for import and wire: a typo'd year is refused, not stored."""
    from datetime import timedelta

    from shared.contract.validation import FUTURE_DATE, latest_trade_date

    ok = latest_trade_date()  # tomorrow (UTC): some market has already closed that day
    f = write(
        tmp_path / "future.csv",
        "\n".join(
            [
                "Date,High,Low,Open,Close,Volume,Adj Close,Name",
                "2017-03-01,11,9,10,10.5,1000,10.4,TYPO",
                "2071-03-01,11,9,10,10.6,1000,10.5,TYPO",
                f"{ok},11,9,10,10.7,1000,10.6,TYPO",
                f"{ok + timedelta(days=1)},11,9,10,10.8,1000,10.7,TYPO",
            ]
        )
        + "\n",
    )
    result = import_prices(db_url, [f])
    assert result.rejected == {FUTURE_DATE: 2} and result.inserted == 2
    assert [r[1] for r in prices(db_url)] == [date(2017, 3, 1), ok]


YAHOO_ROWS = (
    "\n".join(
        [
            "Date,High,Low,Open,Close,Volume,Adj Close,Name",
            "2020-01-02,11,9,10,10.5,1000,10.4,AAA",
            "2020-01-03,12,10,11,11.5,0,11.4,AAA",
            "2020-01-06,12,10,11,0.0,0,0,AAA",  # rejected
            "2020-01-02,11,9,10,10.75,1500,10.6,AAA",  # a later chunk repeats a key: this row wins
            "2020-01-03,12,10,11,11.5,0,11.4,BBB",
            "2020-01-03,12,10,11,12.5,10,12.4,BBB",  # and again within its chunk
        ]
    )
    + "\n"
)


def test_blocks_parsed_in_processes_keep_last_valid_row_wins(db_url, tmp_path):
    """Blocks of about two rows, parsed by the pool of processes while the blocks before them are written;
    a key repeated in a later block is overwritten by it, in one transaction."""
    f = write(tmp_path / "blocks.csv", YAHOO_ROWS)
    result = import_prices(db_url, [f], block_chars=80)
    assert result.rows == 6 and result.rejected == {"non-positive close": 1}
    assert prices(db_url) == [
        ("AAA", date(2020, 1, 2), 10.0, 11.0, 9.0, 10.75, 10.6, 1500.0, "USD"),
        ("AAA", date(2020, 1, 3), 11.0, 12.0, 10.0, 11.5, 11.4, 0.0, "USD"),
        ("BBB", date(2020, 1, 3), 11.0, 12.0, 10.0, 12.5, 12.4, 10.0, "USD"),
    ]
    assert result.inserted == 3 and result.new_instruments == 2
    whole = import_prices(db_url, [f])  # one chunk: the same rows, nothing to change
    assert (whole.inserted, whole.updated, whole.unchanged) == (0, 0, 3)


def test_a_key_another_writer_inserts_meanwhile_is_upserted_not_a_failure(db_url, tmp_path):
    """The plain INSERT of new keys meets a key a concurrent transaction committed after the import's
    snapshot: the chunk is written again as an upsert, and the file's row wins."""
    import threading

    f = write(tmp_path / "race.csv", YAHOO_ROWS)
    other = psycopg.connect(db_url)
    other.execute("""INSERT INTO prices_daily (instrument_id, trade_date, open, high, low, close, adjusted_close,
                     volume, currency) VALUES ('BBB', '2020-01-03', 1, 1, 1, 1, 1, 1, 'USD')""")
    done: dict = {}
    importer = threading.Thread(target=lambda: done.update(result=import_prices(db_url, [f])))
    importer.start()
    importer.join(timeout=2)
    assert importer.is_alive()  # waiting for the other writer's key
    other.commit()
    other.close()
    importer.join(timeout=60)
    assert ("BBB", date(2020, 1, 3), 11.0, 12.0, 10.0, 12.5, 12.4, 10.0, "USD") in prices(db_url)
    assert (done["result"].inserted, done["result"].updated) == (2, 1)


def test_the_real_data_set_imported_where_no_live_service_runs_leaves_no_outbox(real_db_url):
    """Issue 17: a batch-only database (capture never turned on) keeps no copy of what it imports."""
    from live.capture import capture_state
    from shared.store.outbox import outbox_backlog

    with psycopg.connect(real_db_url) as conn:
        assert not capture_state(conn).capturing
        assert conn.execute("SELECT count(*) FROM prices_daily").fetchone()[0] == 592_355
        backlog = outbox_backlog(conn)
        assert backlog.entries == 0 and backlog.keys == 0
        assert conn.execute("SELECT count(*) FROM prices_outbox").fetchone()[0] == 0
