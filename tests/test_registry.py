"""The worker's registry reads every instrument again only when `instruments` changed: a live tick on an
unchanged table reads one fingerprint row, and any change the selection depends on (a new id, a status,
a market, a deletion) makes the next tick read them all."""

from __future__ import annotations

import psycopg

from streams.registry import DbRegistry
from tests.support.platform import add_instruments


def test_the_registry_reloads_only_when_instruments_change(db_url):
    add_instruments(db_url, ["A", "B", "C"])
    registry = DbRegistry(db_url, 4)
    registry.refresh("tick 1")
    assert registry.reloads == 1 and registry.covers("B", "US_EQ")
    registry.refresh("tick 2")  # nothing changed: nothing read again
    assert registry.reloads == 1

    def after(sql: str, params: tuple = ()) -> int:
        with psycopg.connect(db_url) as conn:
            conn.execute(sql, params)
        before = registry.reloads
        registry.refresh(object())
        return registry.reloads - before

    assert after("UPDATE instruments SET status = 'DELISTED' WHERE instrument_id = 'B'") == 1
    assert not registry.covers("B", "US_EQ")
    assert after("UPDATE instruments SET market_id = 'EU_EQ' WHERE instrument_id = 'C'") == 1
    assert registry.covers("C", "EU_EQ") and not registry.covers("C", "US_EQ")
    assert after("UPDATE instruments SET market_id = NULL WHERE instrument_id = 'C'") == 1
    assert after("UPDATE instruments SET asset_class = 'ETF' WHERE instrument_id = 'A'") == 1
    assert not registry.covers("A", "US_EQ")
    assert after("UPDATE instruments SET symbol = 'OTHER' WHERE instrument_id = 'A'") == 0  # not selection
    add_instruments(db_url, ["D"])
    registry.refresh(object())
    assert registry.reloads == 6 and registry.covers("D", "US_EQ")
    assert after("DELETE FROM instruments WHERE instrument_id = 'D'") == 1
    assert registry.unknown({"D"}) == {"D"}
    registry.refresh(object())
    assert registry.reloads == 7  # unchanged since
