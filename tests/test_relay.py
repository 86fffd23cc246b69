"""The relay loop on its own (`live.relay.OutboxRelay.relay_once`) against the real database, with a publisher
that records what it is given: captured rows go out as row batches per partition before the tick queued
after them, a bad row goes alone to the dead letters, and entries are marked published only after the
publisher's flush."""

from __future__ import annotations

from datetime import date, timedelta

import psycopg
import pytest

from live.bootstrap import enqueue_tick
from live.relay import OutboxRelay
from shared.broker.topics import HEAD_BLOCKS, head_block
from shared.contract.config import Settings
from shared.contract.messages import RowBatch, Tick
from tests.support.platform import add_instruments, insert_prices

DAY = date(2019, 12, 20)


class RecordingPublisher:
    def __init__(self, fail_flush: bool = False):
        self.sent: list[tuple] = []
        self.fail_flush = fail_flush

    def row_batch(self, partition: int, batch: RowBatch) -> None:
        self.sent.append(("rows", partition, [r[0] for r in batch.rows]))

    def tick(self, tick: Tick) -> None:
        self.sent.append(("tick", tick.as_of))

    def dead_letter(self, record: bytes) -> None:
        self.sent.append(("dead letter", record))

    def flush(self) -> None:
        if self.fail_flush:
            raise OSError("Kafka did not acknowledge")


def unpublished(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM prices_outbox WHERE published_at IS NULL").fetchone()[0]


@pytest.fixture
def day_landed(db_url) -> str:
    ids = [f"R{k}" for k in range(6)]
    add_instruments(db_url, ids)
    with psycopg.connect(db_url) as conn:
        insert_prices(conn, [(i, DAY - timedelta(days=1), 10.0 + k, 100.0) for k, i in enumerate(ids)])
        insert_prices(
            conn, [(i, DAY, 11.0 + k, 100.0) for k, i in enumerate(ids)] + [("R0", DAY + timedelta(days=1), -5.0, 1.0)]
        )
        enqueue_tick(conn, DAY, 63, ["numeric-simple-v1"])
    return db_url


def test_rows_go_out_before_their_tick_a_bad_row_alone_and_entries_are_marked_after_the_flush(day_landed):
    relay = OutboxRelay(Settings(_env_file=None, database_url=day_landed, partitions=4))
    publisher = RecordingPublisher()
    rounds = []
    with psycopg.connect(day_landed, autocommit=True) as conn:
        while published := relay.relay_once(conn, publisher):  # a round stops after a bootstrap snapshot
            rounds.append(published)
    assert rounds and unpublished(day_landed) == 0
    kinds = [s[0] for s in publisher.sent]
    assert kinds[-1] == "tick" and kinds.count("tick") == 1  # after every row captured before it
    rows = [i for s in publisher.sent if s[0] == "rows" for i in s[2]]
    assert set(rows) == {f"R{k}" for k in range(6)} and {s[1] for s in publisher.sent if s[0] == "rows"} <= set(
        range(4)
    )
    letters = [s[1] for s in publisher.sent if s[0] == "dead letter"]
    assert letters and all(b"R0" in letter and b"non-positive close" in letter for letter in letters)
    assert relay.housekeeping.ticked_through == DAY


def test_nothing_is_marked_published_when_kafka_does_not_acknowledge(day_landed):
    relay = OutboxRelay(Settings(_env_file=None, database_url=day_landed, partitions=4))
    before = unpublished(day_landed)
    with psycopg.connect(day_landed, autocommit=True) as conn, pytest.raises(OSError, match="acknowledge"):
        relay.relay_once(conn, RecordingPublisher(fail_flush=True))
    assert unpublished(day_landed) == before > 0  # they are published again by the next round


def test_a_partitions_day_goes_out_in_the_order_of_the_head_blocks(db_url):
    """A day too large for one message: its rows go out sorted by their instrument's head block (each message
    then rewrites few of the worker's blocks, `streams.window_store`), every instrument's rows in date order."""
    ids = [f"BLOCKORDER-{k:05d}-" + "x" * 30 for k in range(3000)]
    add_instruments(db_url, ids)
    with psycopg.connect(db_url) as conn:
        insert_prices(conn, [(i, d, 10.0, 100.0) for d in (DAY - timedelta(days=1), DAY) for i in ids])
    relay = OutboxRelay(Settings(_env_file=None, database_url=db_url, partitions=1))
    publisher = RecordingPublisher()
    rounds = 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        while relay.relay_once(conn, publisher):
            rounds += 1
    messages = [s[2] for s in publisher.sent if s[0] == "rows"]
    assert len(messages) > 2 and sorted(i for m in messages for i in m) == sorted(ids * 2)
    blocks = [head_block(i) for m in messages for i in m]
    runs = 1 + sum(1 for a, b in zip(blocks, blocks[1:]) if a != b)
    assert runs <= HEAD_BLOCKS * rounds  # each relay round sends its rows block by block
    for m in messages:
        assert [head_block(i) for i in m] == sorted(head_block(i) for i in m)
