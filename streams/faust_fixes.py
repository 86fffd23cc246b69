"""Fixes to faust-streaming 0.15.3: two stop it from losing fetched messages around recovery, a third lets
a worker start while a broker is down, a fourth bounds how long fetched data can wait, a fifth keeps a
restore from taking a window back, a sixth drops a fixed second from every start; the seventh to tenth
are listed below (commits wait for the changelog, topics are not created again, a restore starts early
enough to read what another worker wrote, a stop does not wait a second for acks it has).

Found with the worker restarted on a backlog (tests/test_stream_resilience.py), traced by logging
every flow-control call and every fetched offset:

1. Recovery resumes the app's flow control to read the changelogs, resumes the source partitions,
   seeks them to their committed offsets, then calls `flow_control.resume()` once more. mode's
   `FlowControlEvent.resume()` clears every stream queue on *each* call, even when flow control is
   already active: the source messages fetched during that last seek, already queued for the agent
   in the current generation, were thrown away while the consumer's position had moved past them
   (prices offsets 4..16 of every partition in one trace). Fixed: the queues are cleared only when
   flow control really goes from suspended to active (the messages queued before a suspension are
   of an older generation, which the stream skips anyway).

2. `seek_to_committed` (aiokafka) does not move a partition that has no committed offset, so after
   a rebalance in a group's first seconds (before its first commit) anything fetched and dropped
   before the rebalance was never fetched again. Fixed: source partitions without a committed
   offset are sought to their beginning (`auto_offset_reset="earliest"`, what a fresh group reads).
   Changelog partitions are left alone: faust tracks their positions itself.

3. Creating a topic asks the cluster's controller; with that broker just lost, aiokafka raises
   (`NodeNotReadyError`, a connection error, "Controller node not found") and the worker exits while
   starting, though the other brokers serve (issue 18, on a 3-node cluster with a broker killed -9).
   Fixed: the creation is tried again with backoff (0.2 s to 5 s, for up to 90 s) after a metadata
   refresh, logged once when it starts failing and once when it succeeds.

4. faust creates its consumer with `fetch_max_wait_ms=1500`, fixed. aiokafka leaves a partition whose
   fetched records are not consumed yet out of the next fetch request, and sends no new request to a
   broker while one is parked there: records produced meanwhile to a left-out partition wait until the
   parked request times out. In live ticks of 5,000 instruments, 2 of 10 ticks waited ~0.7 s this way
   (benchmarks/profile_ticks.py: the worker idle while the day's rows sat in the topic). Fixed: the
   worker's consumer waits at most `EMBEDDER_CONSUMER_FETCH_WAIT_MS` (100 ms; a fetch answers at once
   when data is there, so this costs an idle worker ten empty fetches a second per broker).

5. Restoring a table (at a rebalance, and continuously on a standby) writes every changelog record into
   RocksDB in offset order, whoever wrote it. A worker frozen past its session timeout (SIGSTOP, a GC
   pause, a stalled VM) wakes up still processing the events it had fetched and writes their state to the
   changelog of partitions another worker now owns, after that worker's newer writes (issue 26): a
   later restore would put those windows back in time while the committed offsets are past what they
   miss. Fixed for the window tables: a record written at an older source offset than the value stored
   for its key is not applied (`streams.window_store.replaces`; values carry that offset).

6. The table manager sleeps 1 s before it registers the tables' changelogs, so that tables an agent
   declares late are in (every start of every worker, and of the worker a one-shot replay starts). This
   app declares its tables when it is made (`streams/app.py`), before the worker starts: the wait is
   skipped.

7. Before committing source offsets, faust flushes its producer: `ProducerBuffer.flush` waits for the
   buffered changelog records to be handed to aiokafka, then aiokafka's flush waits for delivery. But the
   buffer's flush gives up as soon as 0.1 s passes without a record handed over (and does not count the
   record being handed over), which is routine while a changelog partition's leader moves or a broker
   is frozen: the offsets were committed while the state they cover was still in this worker's memory.
   A worker frozen or killed then lost that state for good: the next owner restored windows without
   their snapshot (a chunk missing, or only the newest rows) and, the offsets being past the events that
   built them, computed "without enough history" for instruments with years of it (issue 26, the chaos
   run with seed 901748). Fixed: the flush waits until every record buffered before it is handed over
   (not those put meanwhile: a busy stream never holds a commit back; a stopping producer keeps faust's
   behaviour).

8. faust "creates" each internal topic (the four changelogs and the leader topic) when its table starts and
   again when the conductor first subscribes: each time a metadata request of every topic on the cluster
   for the controller, a CreateTopics request the broker answers "exists" (`shared.broker.topics.ensure_topics`
   made them before the app started) and a forced metadata refresh: 0.1-0.2 s apiece on a broker with a
   thousand topics, ~1.2 s of every worker's start. Fixed: one metadata request lists the cluster's topics
   (at most once per 10 s), and the producer does not create a topic on it again; any other topic, or a
   failed listing, goes faust's way (with fix 3).

9. The local store's persisted offset — where a restore of a table partition starts reading its changelog when
   the partition comes back to this worker — is set to the offset of each changelog record this worker writes.
   A worker frozen past its session timeout wakes up still writing, and its records land after those of the
   worker that took its partitions over: its persisted offset then jumps past that worker's records, and when
   the partitions come back to it (the assignment is sticky) the restore starts after them, so the windows
   they moved on are never read (a window taken back in time for good, though fix 5 guards every record it
   reads). Fixed: the persisted offset advances over an unbroken run of this worker's own records only (only
   the owner writes a changelog partition, so anything else in between was written by another worker); once
   broken it stays where the run broke, and the next restore reads everything since, guarded as in fix 5.
   A restore records the last record it read, whether applied or not (fix 5 may leave the last ones out).

10. Before a rebalance revokes partitions, and when a worker stops, faust waits until every message it delivered is
   acked: while its set of unacked messages is not empty it commits, then waits up to 1 s for an ack, and only
   then drops the messages acked meanwhile. Messages acked already can be in that set (its ack leaves a message
   there when the offset was committed or acked before), so the wait took the whole second for nothing (4 such
   messages at the end of a one-shot replay, each acked, refcount 0): every stop of every worker (of
   the one a one-shot replay starts, 1.0 s of its ~20 s) and every rebalance. Fixed: the acked messages are
   dropped before the wait; unacked ones are waited for as before.

The first two only ever cause a message to be delivered again, never skipped; the worker's processing is
idempotent (windows are upserts keyed by date, replay row counts are kept per offset, embeddings
are upserted), so a repeat changes nothing. `streams/gaps.py` still reports any skipped offset.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from shared.contract.errors import EmbedderError

log = logging.getLogger("embedder.faust_fixes")

_applied = False
VERIFIED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}
"""The versions the two patches were written and verified against (pinned in pyproject.toml and
requirements.lock)."""


def version_problem(installed: Mapping[str, str | None]) -> str | None:
    """Why the installed libraries are not the verified ones, or None."""
    wrong = [
        f"{name} {installed.get(name) or 'missing'} (verified: {want})"
        for name, want in VERIFIED.items()
        if installed.get(name) != want
    ]
    if not wrong:
        return None
    return (
        f"streams/faust_fixes.py patches faust internals and was verified against other versions: "
        f"{', '.join(wrong)}. Install the lock file (make setup), or re-run "
        "tests/test_stream_resilience.py on these versions and set EMBEDDER_ALLOW_UNVERIFIED_FAUST=1"
    )


def installed_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in VERIFIED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def apply(allow_unverified: bool = False, fetch_wait_ms: int = 100) -> None:
    """Patch the classes once per process (before the app starts). Refuses (EmbedderError) on library
    versions the patches were not verified against, unless `allow_unverified`."""
    global _applied, _fetch_wait_ms
    _fetch_wait_ms = fetch_wait_ms
    if _applied:
        return
    problem = version_problem(installed_versions())
    if problem and not allow_unverified:
        raise EmbedderError(problem)
    if problem:
        log.warning("%s (allowed by EMBEDDER_ALLOW_UNVERIFIED_FAUST)", problem)
    _resume_clears_only_after_a_suspension()
    _uncommitted_source_partitions_restart_from_the_beginning()
    _topic_creation_rides_out_a_broker_loss()
    _existing_topics_are_not_created_again()
    _fetch_wait_is_bounded()
    _restore_never_goes_back()
    _tables_start_without_waiting()
    _commit_waits_for_the_changelog()
    _persisted_offset_follows_own_writes()
    _stop_waits_only_for_unacked_messages()
    _applied = True


WINDOW_TABLES = "windows"
"""Tables whose name holds this keep window values (`streams.window_store`), versioned by source offset."""


def _restore_never_goes_back() -> None:
    from faust.stores.rocksdb import Store

    from streams.window_store import fresh_records

    original = Store.apply_changelog_batch

    def apply_changelog_batch(self: Store, batch, to_key, to_value) -> None:
        if WINDOW_TABLES not in self.table_name:
            return original(self, batch, to_key, to_value)
        events = list(batch)
        kept = fresh_records(
            ((e.message.partition, e.message.key, e.message.value) for e in events),
            lambda partition, key: self._db_for_partition(partition).get(key),
        )
        if len(kept) < len(events):
            log.warning(
                "restoring %s: %d changelog record(s) older than the stored values not applied (written by a "
                "worker that had lost these partitions)",
                self.table_name,
                len(events) - len(kept),
            )
        for k, value in kept:  # a head block merged with the one held
            events[k].message.value = value
        original(self, [events[k] for k, _ in kept], to_key, to_value)
        read: dict = {}
        for e in events:  # read, applied or not: the next restore starts after them (fix 9)
            read[e.message.tp] = max(e.message.offset, read.get(e.message.tp, -1))
        for tp, offset in read.items():
            self.set_persisted_offset(tp, offset)

    Store.apply_changelog_batch = apply_changelog_batch  # type: ignore[method-assign]


def _tables_start_without_waiting() -> None:
    from faust.tables.manager import TableManager

    async def on_start(self: TableManager) -> None:
        if not self.should_stop:  # faust: `await self.sleep(1.0)` first, for tables declared late
            await self._update_channels()
            await self.recovery.start()

    TableManager.on_start = on_start  # type: ignore[method-assign]


PUT, HANDED = "_embedder_records_put", "_embedder_records_handed"
"""Counters kept in a ProducerBuffer's __dict__: records put into it, and records handed to aiokafka."""


def _commit_waits_for_the_changelog() -> None:
    import asyncio

    from faust.transport.producer import ProducerBuffer

    original_flush = ProducerBuffer.flush
    original_put = ProducerBuffer.put
    original_send = ProducerBuffer._send_pending

    def count(buffer: ProducerBuffer, name: str) -> int:
        return buffer.__dict__.get(name, 0)

    def put(self: ProducerBuffer, fut) -> None:
        self.__dict__[PUT] = count(self, PUT) + 1
        original_put(self, fut)

    async def _send_pending(self: ProducerBuffer, fut) -> None:
        try:
            await original_send(self, fut)
        finally:  # handed over (or failed: then the buffer's task ends and faust's stop reports it)
            self.__dict__[HANDED] = count(self, HANDED) + 1

    async def flush(self: ProducerBuffer) -> None:
        """Return once every record buffered before this call is handed to the client (faust: once 0.1 s
        passes without one). Records put meanwhile are not waited for, so a busy stream cannot hold a commit
        back. One task hands records over, in the order they were put."""
        if self.app is not None and self.app.conf.producer_threaded:  # not this buffer's queue: faust's way
            return await original_flush(self)
        target = count(self, PUT)
        while not self.should_stop and count(self, HANDED) < target:
            self.message_sent.clear()
            try:
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)
            except TimeoutError:
                pass
        if self.should_stop:
            await original_flush(self)

    ProducerBuffer.put = put  # type: ignore[method-assign]
    ProducerBuffer._send_pending = _send_pending  # type: ignore[method-assign]
    ProducerBuffer.flush = flush  # type: ignore[method-assign]


_fetch_wait_ms = 100


def _fetch_wait_is_bounded() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = _fetch_wait_ms  # read when the consumer starts its fetcher
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


TOPIC_CREATION_DEADLINE_SECONDS = 90.0


def _topic_creation_rides_out_a_broker_loss() -> None:
    import asyncio
    import time

    from faust.transport.drivers.aiokafka import Transport

    original = Transport._really_create_topic

    async def _really_create_topic(self, owner, client, topic, *args, **kwargs):
        deadline = time.monotonic() + TOPIC_CREATION_DEADLINE_SECONDS
        delay, failing_since = 0.2, None
        while True:
            try:
                result = await original(self, owner, client, topic, *args, **kwargs)
            except Exception as e:  # aiokafka's errors, and faust's own "Controller node not found"
                if owner.should_stop or time.monotonic() + delay > deadline:
                    raise
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning(
                        "creating topic %r: %s; retrying for up to %.0f s",
                        topic,
                        str(e).splitlines()[0] if str(e) else type(e).__name__,
                        TOPIC_CREATION_DEADLINE_SECONDS,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                try:
                    await client.force_metadata_update()
                except Exception:  # the next attempt says what is wrong
                    pass
                continue
            if failing_since is not None:
                log.warning("creating topic %r: done after %.1f s of retries", topic, time.monotonic() - failing_since)
            return result

    Transport._really_create_topic = _really_create_topic  # type: ignore[method-assign]


KNOWN_TOPICS_MAX_AGE_SECONDS = 10.0
KNOWN_TOPICS = "_embedder_known_topics"
"""A Producer's __dict__ entry: (monotonic time of the listing, the topic names the cluster had then)."""


def _existing_topics_are_not_created_again() -> None:
    import time

    from faust.transport.drivers.aiokafka import Producer

    creating = Producer.create_topic

    async def listed(self: Producer) -> frozenset[str]:
        at, names = self.__dict__.get(KNOWN_TOPICS, (float("-inf"), frozenset()))
        if time.monotonic() - at > KNOWN_TOPICS_MAX_AGE_SECONDS:
            try:
                names = frozenset((await self._ensure_producer().client.fetch_all_metadata()).topics())
            except Exception as e:  # the creation itself tries again and says what is wrong
                log.debug("listing topics before creating them: %s", e)
                return frozenset()
            self.__dict__[KNOWN_TOPICS] = (time.monotonic(), names)
        return names

    async def create_topic(self: Producer, topic: str, *args, **kwargs) -> None:
        if not kwargs.get("ensure_created") and topic in await listed(self):
            return None
        return await creating(self, topic, *args, **kwargs)

    Producer.create_topic = create_topic  # type: ignore[method-assign]


def _resume_clears_only_after_a_suspension() -> None:
    from mode.utils.queues import FlowControlEvent

    def resume(self: FlowControlEvent) -> None:
        """Resume production into the queues; drop their contents only after a real suspension."""
        was_suspended = self._suspend.is_set()
        self._suspend.clear()
        self._resume.set()
        if was_suspended:
            self.clear()

    FlowControlEvent.resume = resume  # type: ignore[method-assign]


def _uncommitted_source_partitions_restart_from_the_beginning() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    async def seek_to_committed(self: AIOKafkaConsumerThread) -> Mapping:
        consumer = self._ensure_consumer()
        changelogs = set(self.app.tables.changelog_topics)

        async def seek() -> Mapping:
            committed = await consumer.seek_to_committed()
            never = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]
            if never:
                await consumer.seek_to_beginning(*never)
            return committed

        return await self.call_thread(seek)

    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed  # type: ignore[method-assign]


def advances(persisted: int | None, written: int) -> bool:
    """Whether this worker's changelog record at offset `written` extends the unbroken run of records the
    local store holds up to `persisted` (None: nothing read or written yet, so only the first record of a
    changelog does)."""
    return written == (0 if persisted is None else persisted + 1)


def _persisted_offset_follows_own_writes() -> None:
    from faust.tables.base import Collection

    original = Collection._on_changelog_sent
    warned: set[tuple[str, str, int, int | None]] = set()

    def _on_changelog_sent(self: Collection, fut) -> None:
        if self.app.in_transaction:
            return original(self, fut)
        res = fut.result()
        tp, offset = res.topic_partition, res.offset
        persisted = self.data.persisted_offset(tp)
        if advances(persisted, offset):
            self.data.set_persisted_offset(tp, offset)
        elif (self.name, tp.topic, tp.partition, persisted) not in warned:
            warned.add((self.name, tp.topic, tp.partition, persisted))
            log.warning(
                "changelog %s[%s]: record %s does not follow %s: another worker wrote this partition's changelog "
                "(it had the partition while this worker was frozen or cut off); a restore here reads again "
                "from %s",
                tp.topic,
                tp.partition,
                offset,
                persisted,
                "the beginning" if persisted is None else persisted + 1,
            )

    Collection._on_changelog_sent = _on_changelog_sent  # type: ignore[method-assign]


def _stop_waits_only_for_unacked_messages() -> None:
    from faust.transport.consumer import Consumer

    wait_empty = Consumer.wait_empty

    async def wait_for_unacked(self: Consumer) -> None:
        self._clean_unacked_messages()  # acked already: nothing to wait a second for (fix 10)
        await wait_empty(self)

    Consumer.wait_empty = wait_for_unacked  # type: ignore[method-assign]
