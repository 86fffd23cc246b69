"""The sink on its own: `BatchingSink` (ordering, grouping, back-pressure, draining on stop) with a writer
that records what it is given, and `SinkWriter` against the real database (embeddings, absent keys and
tick completions in one transaction; the cause of what it supersedes)."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import date

import numpy as np
import psycopg

from shared.contract.messages import LIVE_RUN
from streams.output import Embedding, EmbeddingBatch, TickDone
from streams.sink import BatchingSink, SinkWriter, database_sink

DAY = date(2020, 1, 2)


def batch(n: int, run: str = LIVE_RUN, done: tuple = (), partition: int = 0) -> EmbeddingBatch:
    return EmbeddingBatch(
        run, 2, partition, [Embedding(f"I{n}", DAY, "numeric-simple-v1", np.full(6, n, "<f4").tobytes())], done
    )


class RecordingWriter:
    """Writes by remembering; `gate` (an Event) holds every write until set."""

    def __init__(self):
        self.groups: list[list[EmbeddingBatch]] = []
        self.gate: threading.Event | None = None

    def write_until_committed(self, batches) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        self.groups.append(list(batches))


def test_batches_are_written_in_submission_order_grouped_and_acked_after_their_write():
    writer = RecordingWriter()
    writer.gate = threading.Event()
    sink = BatchingSink([writer], batch_embeddings=100, batch_seconds=0.05)
    acked: list[int] = []

    async def run() -> None:
        for n in range(5):
            await sink.submit([batch(n)], lambda n=n: acked.append(n))
        await asyncio.sleep(0.02)
        assert acked == []  # nothing acked before its write
        writer.gate.set()
        await sink.write([batch(5)])  # waits for its own commit, after everything queued before it

    asyncio.run(run())
    sink.stop()
    written = [b.items[0].instrument_id for group in writer.groups for b in group]
    assert written == [f"I{n}" for n in range(6)] and acked == [0, 1, 2, 3, 4]
    assert len(writer.groups) < 6  # grouped into fewer transactions than batches


def test_a_full_queue_makes_the_stream_wait_and_stop_drains_what_is_queued():
    writer = RecordingWriter()
    writer.gate = threading.Event()
    sink = BatchingSink([writer], batch_embeddings=1, batch_seconds=0.0, max_pending=2)
    order: list[str] = []

    async def run() -> None:
        await sink.submit([batch(0)], lambda: None)
        await sink.submit([batch(1)], lambda: None)
        waiting = asyncio.create_task(sink.submit([batch(2)], lambda: None))
        await asyncio.sleep(0.05)
        order.append("third waits" if not waiting.done() else "third queued")
        writer.gate.set()
        await waiting
        order.append("third queued")

    asyncio.run(run())
    sink.stop(timeout=10)
    assert order == ["third waits", "third queued"]
    assert [b.items[0].instrument_id for group in writer.groups for b in group] == ["I0", "I1", "I2"]


def test_stop_writes_what_was_queued_even_after_the_event_loop_closed():
    """The worker's loop can close while the sink thread is inside a write (seen in CI: the next submission
    was never written). Writes go on; their acks cannot run, so their events come again."""
    writer = RecordingWriter()
    writer.gate = threading.Event()
    sink = BatchingSink([writer], batch_embeddings=1, batch_seconds=0.0)

    async def run() -> None:
        await sink.submit([batch(0)], lambda: None)
        await sink.submit([batch(1)], lambda: None)

    asyncio.run(run())  # closes the loop while the first write waits on the gate
    writer.gate.set()
    sink.stop(timeout=10)
    assert [b.items[0].instrument_id for group in writer.groups for b in group] == ["I0", "I1"]


def test_each_partition_is_written_in_order_by_one_lane_and_a_stuck_lane_holds_back_only_its_partitions():
    """Two writers: partitions 0, 2, ... on the first, 1, 3, ... on the second. A key is always computed by the
    same partition, so its writes keep their order; the other lane commits meanwhile."""
    even, odd = RecordingWriter(), RecordingWriter()
    even.gate = threading.Event()  # the first lane's database is stuck
    sink = BatchingSink([even, odd], batch_embeddings=1, batch_seconds=0.0)
    acked: list[str] = []

    async def run() -> None:
        for n in range(6):
            await sink.submit([batch(n, partition=n % 4)], lambda n=n: acked.append(f"I{n}"))
        await sink.write([batch(9, partition=3)])  # waits only for its own lane
        assert sorted(acked) == ["I1", "I3", "I5"]  # the odd partitions' events, acked while the first lane waits
        even.gate.set()
        await sink.write([batch(8, partition=2)])

    asyncio.run(run())
    sink.stop()
    assert [b.items[0].instrument_id for group in even.groups for b in group] == ["I0", "I2", "I4", "I8"]
    assert [b.items[0].instrument_id for group in odd.groups for b in group] == ["I1", "I3", "I5", "I9"]
    assert acked[3:] == ["I0", "I2", "I4"]


def test_the_writer_commits_embeddings_absent_keys_and_completions_together_naming_the_cause(db_url):
    writer = SinkWriter(db_url)
    first = batch(1, done=(TickDone(DAY, 1),))
    absent = EmbeddingBatch(LIVE_RUN, 2, 0, [Embedding("GONE", DAY, "numeric-simple-v1", b"")], (), cause="")
    writer.write_until_committed([first, absent])
    changed = EmbeddingBatch(
        LIVE_RUN,
        2,
        0,
        [Embedding("I1", DAY, "numeric-simple-v1", np.full(6, 9, "<f4").tobytes())],
        cause="prices of I1 2020-01-01",
    )
    writer.write_until_committed([changed])
    writer.write_until_committed([changed])  # the same again: nothing changes, no version
    with psycopg.connect(db_url) as conn:
        stored = conn.execute("SELECT entity_id, vector FROM numeric_window_embeddings").fetchall()
        commits = conn.execute("SELECT run_id, as_of_date, embeddings FROM embedder_tick_commits").fetchall()
        absent_keys = conn.execute("SELECT entity_id FROM embedder_absent_embeddings").fetchall()
        versions = conn.execute("SELECT entity_id, cause FROM numeric_window_embedding_versions").fetchall()
    assert [(i, bytes(v)) for i, v in stored] == [("I1", np.full(6, 9, "<f4").tobytes())]
    assert commits == [(LIVE_RUN, DAY, 1)] and absent_keys == [("GONE",)]
    assert versions == [("I1", "correction: prices of I1 2020-01-01")]


def test_the_writers_of_a_sink_take_turns_at_the_upsert_and_only_there(db_url):
    """While one writer of a worker's sink upserts (here: holds the turn), another stages its batch and then
    waits, committing nothing, until the turn is free; then it commits (`SinkWriter`: upserts side by side cost
    PostgreSQL more CPU)."""
    sink = database_sink(db_url, 2)
    first, second = (lane.writer for lane in sink._lanes)
    assert isinstance(first, SinkWriter) and isinstance(second, SinkWriter) and first.upserting is not None
    with psycopg.connect(db_url, autocommit=True) as watch:

        def waiting_in_transaction() -> bool:
            return watch.execute(
                """SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                   AND pid <> pg_backend_pid() AND state = 'idle in transaction'"""
            ).fetchone() == (1,)

        def stored() -> tuple[int, int]:
            row = watch.execute(
                "SELECT (SELECT count(*) FROM numeric_window_embeddings), (SELECT count(*) FROM embedder_tick_commits)"
            ).fetchone()
            assert row is not None
            return row

        with first.upserting:  # the first writer's turn
            writing = threading.Thread(
                target=second.write_until_committed, args=([batch(1, done=(TickDone(DAY, 1),))],)
            )
            writing.start()
            deadline = time.monotonic() + 30
            while not waiting_in_transaction() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert waiting_in_transaction() and writing.is_alive()  # staged, waiting for its turn
            assert stored() == (0, 0)
        writing.join(30)
        assert not writing.is_alive() and stored() == (1, 1)
