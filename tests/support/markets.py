"""Markets the tests build, and instants between transactions."""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from pathlib import Path

import psycopg

from shared.broker.publisher import PricePublisher
from shared.contract.messages import RowBatch
from tests.support.helpers import load_synthetic

MODELS = ["numeric-simple-v1", "num-regime-core-v1"]


def live_market(url: str, tmp_path: Path) -> tuple[list[str], list[date]]:
    """A synthetic market imported (so its rows are captured in prices_outbox): its ids and last 5 days."""
    load_synthetic(url, tmp_path, instruments=12)
    with psycopg.connect(url) as conn:
        ids = [r[0] for r in conn.execute("SELECT instrument_id FROM instruments ORDER BY 1")]
        days = [r[0] for r in conn.execute("SELECT DISTINCT trade_date FROM prices_daily ORDER BY 1 DESC LIMIT 5")][
            ::-1
        ]
    return ids, days


def publish_backlog(settings, batches: int, start: date) -> None:
    """Row batches of a replay run nobody ticks, on every partition: lag for a worker to work off."""
    publisher = PricePublisher(settings)
    for k in range(batches):
        rows = [(f"LAG{i:03d}", start + timedelta(days=k), 10.0 + i, 100.0) for i in range(40)]
        for p in range(settings.partitions):
            publisher.row_batch(p, RowBatch("replay-lagtest", 5, rows))
    publisher.flush()
    publisher.close()


def instant(url: str) -> datetime:
    """An instant between the transactions before and after it (they compare by start time)."""
    time.sleep(0.01)
    with psycopg.connect(url) as conn:
        t = conn.execute("SELECT now()").fetchone()[0]
    time.sleep(0.01)
    return t
