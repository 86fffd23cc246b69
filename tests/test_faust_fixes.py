"""The flow-control patch: a resume that is not after a suspension keeps what is queued for the agent.

(The end-to-end proof is tests/test_stream_resilience.py: a worker killed and restarted on a
backlog lost rows in 7 of 16 runs without the patches, 0 of 18 with them.)
"""

from __future__ import annotations

import asyncio
import contextlib

from streams import faust_fixes


def test_resume_keeps_queued_messages_unless_flow_was_suspended():
    faust_fixes.apply()
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    async def scenario() -> tuple[int, int]:
        flow = FlowControlEvent()
        flow.resume()
        queue = FlowControlQueue(maxsize=10, flow_control=flow, clear_on_resume=True)
        queue.put_nowait("offset 4")
        queue.put_nowait("offset 5")
        flow.resume()  # recovery's last resume, flow already active: messages of this generation stay
        kept = queue.qsize()
        flow.suspend()  # a rebalance: what was queued before it is of an older generation
        flow.resume()
        return kept, queue.qsize()

    kept, after_suspension = asyncio.run(scenario())
    assert kept == 2
    assert after_suspension == 0


def test_source_partitions_without_a_committed_offset_are_sought_to_their_beginning():
    """aiokafka's seek_to_committed leaves a partition without a committed offset where it is: after
    a rebalance in a group's first seconds what was fetched and dropped would never come again."""
    faust_fixes.apply()
    from aiokafka.structs import TopicPartition as TP
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    committed_offsets = {TP("prices", 0): 12, TP("prices", 1): None, TP("windows-changelog", 1): None}

    class Consumer:
        def __init__(self):
            self.sought_to_beginning: list = []

        async def seek_to_committed(self):
            return dict(committed_offsets)

        async def seek_to_beginning(self, *tps):
            self.sought_to_beginning.extend(tps)

    class Tables:
        changelog_topics = {"windows-changelog"}

    class App:
        tables = Tables()

    class Thread:
        app = App()
        consumer = Consumer()

        def _ensure_consumer(self):
            return self.consumer

        async def call_thread(self, fn):
            return await fn()

    thread = Thread()
    committed = asyncio.run(AIOKafkaConsumerThread.seek_to_committed(thread))
    assert committed == committed_offsets
    assert thread.consumer.sought_to_beginning == [TP("prices", 1)]  # the changelog is faust's own business


def test_the_worker_refuses_library_versions_the_patches_were_not_verified_against():
    assert faust_fixes.version_problem(dict(faust_fixes.VERIFIED)) is None
    assert faust_fixes.version_problem(faust_fixes.installed_versions()) is None  # what make setup installs
    problem = faust_fixes.version_problem({**faust_fixes.VERIFIED, "faust-streaming": "0.16.0", "aiokafka": None})
    assert "faust-streaming 0.16.0 (verified: 0.15.3)" in problem and "aiokafka missing" in problem
    assert "EMBEDDER_ALLOW_UNVERIFIED_FAUST" in problem


def test_apply_refuses_to_start_on_unverified_versions_unless_allowed(monkeypatch):
    import pytest

    from shared.contract.errors import EmbedderError

    monkeypatch.setattr(faust_fixes, "_applied", False)
    monkeypatch.setattr(faust_fixes, "installed_versions", lambda: {**faust_fixes.VERIFIED, "mode-streaming": "0.8.0"})
    with pytest.raises(EmbedderError, match="mode-streaming 0.8.0"):
        faust_fixes.apply()
    faust_fixes.apply(allow_unverified=True)  # patches applied, with a warning
    assert faust_fixes._applied


def test_the_worker_consumer_waits_at_most_the_configured_fetch_time():
    """faust fixes fetch_max_wait_ms at 1500: a live tick's rows could sit that long in the topic while a
    parked fetch (of other partitions) held the broker's connection."""
    import faust

    faust_fixes.apply(fetch_wait_ms=80)
    app = faust.App("fetch-wait-test", broker="kafka://127.0.0.1:1")

    async def consumer_fetch_wait() -> int:
        thread = app.consumer._thread
        return thread._create_worker_consumer(app.transport)._fetch_max_wait_ms

    try:
        assert asyncio.run(consumer_fetch_wait()) == 80
    finally:
        faust_fixes.apply()  # back to the default for the other tests of this process


def test_a_commit_waits_until_every_buffered_changelog_record_is_handed_to_the_client():
    """faust flushes its producer before committing offsets, but its buffer's flush returned once 0.1 s
    passed without a record handed over: while a changelog partition's leader moves, offsets were
    committed with the state they cover still in memory (issue 26: lost with a worker frozen then)."""
    faust_fixes.apply()
    from types import SimpleNamespace

    from faust.transport.producer import ProducerBuffer

    published: list[int] = []

    class SlowChannel:
        async def publish_message(self, fut, wait: bool = False) -> None:
            await asyncio.sleep(0.25)  # the partition's leader is moving: each hand-over waits
            published.append(fut.n)

    async def scenario() -> tuple[int, list[int]]:
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        await buffer.start()
        try:
            for n in range(3):
                buffer.put(SimpleNamespace(n=n, message=SimpleNamespace(channel=SlowChannel())))
            await buffer.flush()
            return buffer.size, list(published)
        finally:
            with contextlib.suppress(RuntimeError):  # faust's own stop refuses a buffer still holding records
                await buffer.stop()

    left, handed = asyncio.run(scenario())
    assert left == 0
    assert handed == [0, 1, 2]


def test_a_commit_does_not_wait_for_records_put_after_it_began():
    """A busy stream keeps putting records while a commit flushes: the flush waits for those put before it only,
    so it cannot be held back for as long as the stream is busy."""
    faust_fixes.apply()
    from types import SimpleNamespace

    from faust.transport.producer import ProducerBuffer

    published: list[int] = []

    class SlowChannel:
        async def publish_message(self, fut, wait: bool = False) -> None:
            await asyncio.sleep(0.05)
            published.append(fut.n)

    def record(n: int) -> SimpleNamespace:
        return SimpleNamespace(n=n, message=SimpleNamespace(channel=SlowChannel()))

    async def scenario() -> list[int]:
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        await buffer.start()

        async def busy_stream() -> None:
            for n in range(3, 1000):
                buffer.put(record(n))
                await asyncio.sleep(0.01)  # faster than records are handed over: the buffer never empties

        try:
            for n in range(3):
                buffer.put(record(n))
            stream = asyncio.ensure_future(busy_stream())
            await asyncio.wait_for(buffer.flush(), timeout=10)
            handed = list(published)
            stream.cancel()
            return handed
        finally:
            with contextlib.suppress(RuntimeError):
                await buffer.stop()

    handed = asyncio.run(scenario())
    assert handed[:3] == [0, 1, 2]
    assert len(handed) < 50  # returned once the first three were handed over, not when the stream went quiet


def test_the_restore_point_advances_over_this_workers_own_changelog_records_only():
    """The local store's persisted offset is where a restore starts when the partition comes back. A worker frozen
    past its session timeout writes its records after those of the worker that took over: the restore point must
    stay before them, or their windows are never read here (issue 28, chaos seed 440704)."""
    faust_fixes.apply()
    from types import SimpleNamespace

    from faust.tables.base import Collection

    tp = SimpleNamespace(topic="embedder-windows-changelog", partition=3)

    class Store:
        def __init__(self, persisted: int | None):
            self.offsets = {} if persisted is None else {tp.partition: persisted}

        def persisted_offset(self, tp_) -> int | None:
            return self.offsets.get(tp_.partition)

        def set_persisted_offset(self, tp_, offset: int) -> None:
            self.offsets[tp_.partition] = offset

    def written(table, offset: int) -> None:
        result = SimpleNamespace(topic_partition=tp, offset=offset)
        Collection._on_changelog_sent(table, SimpleNamespace(result=lambda: result))

    table = SimpleNamespace(name="windows", app=SimpleNamespace(in_transaction=False), data=Store(41))
    for offset in (42, 43, 44):  # the owner's records, one after another
        written(table, offset)
    assert table.data.persisted_offset(tp) == 44
    written(table, 57)  # 45..56 were written by the worker that had the partition meanwhile
    written(table, 58)
    assert table.data.persisted_offset(tp) == 44  # a restore here reads 45.. again
    fresh = SimpleNamespace(name="windows", app=SimpleNamespace(in_transaction=False), data=Store(None))
    written(fresh, 0)  # the first record of a new changelog
    assert fresh.data.persisted_offset(tp) == 0
    unread = SimpleNamespace(name="windows", app=SimpleNamespace(in_transaction=False), data=Store(None))
    written(unread, 9)  # nothing read here, records before it: a restore reads from the beginning
    assert unread.data.persisted_offset(tp) is None
    assert faust_fixes.advances(44, 45) and not faust_fixes.advances(44, 46) and not faust_fixes.advances(44, 44)


def test_a_stop_does_not_wait_for_messages_acked_already_and_still_waits_for_the_others():
    """faust's wait before a revocation or a stop kept acked messages in its set of unacked ones until after
    a wait of up to a second for an ack: every worker's stop took that second for nothing."""
    faust_fixes.apply()
    from types import SimpleNamespace

    from faust.transport.consumer import Consumer

    class Stopping:
        _clean_unacked_messages = Consumer._clean_unacked_messages

        def __init__(self, messages: list):
            self._unacked_messages = set(messages)
            self.should_stop = False
            self.waits = 0
            self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
            self.log = SimpleNamespace(dev=lambda *a: None, warning=lambda *a: None, info=lambda *a: None)

        async def commit(self) -> None:
            pass

        async def commit_and_end_transactions(self) -> None:
            pass

        async def _wait_for_ack(self, timeout: float) -> None:
            self.waits += 1
            for m in self._unacked_messages:
                m.acked = True  # the stream acks what it was processing

    class Message:
        def __init__(self, acked: bool):
            self.acked = acked

    acked = [Message(True) for _ in range(4)]
    done = Stopping(acked)
    asyncio.run(Consumer.wait_empty(done))
    assert done.waits == 0 and not done._unacked_messages

    busy = Stopping([*acked, Message(False)])
    asyncio.run(Consumer.wait_empty(busy))
    assert busy.waits == 1 and not busy._unacked_messages
