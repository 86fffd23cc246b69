"""Consumer lag of the project's consumer group, read from the broker, with Burrow-style statuses.

Everything here comes from Kafka itself (committed offsets, log-end offsets,
record timestamps, group membership), so it reports while every worker is
down. A `LagMonitor` keeps a sliding window of samples per partition and
judges each one in the manner of Burrow's rules:

- OK: lag is zero somewhere in the window, or the consumer is keeping up.
- WARN: the committed offset moves, but lag grew across every sample of the window.
- STALL: a member is in the group, but the committed offset did not move across
  the window while lag > 0, the window spanning at least `STALL_EVIDENCE_SECONDS` (a live
  worker commits every 2.8 s and after its sink's batch: an unmoved offset over a shorter span
  is no evidence; a one-shot `embedder lag` keeps sampling until it has the span).
- STOP: no member is consuming and lag > 0 (no commits can come).
- REWIND: the committed offset moved backwards within the window (offsets reset by hand, or the
  topic recreated): prices are processed again.
- ERR: the broker could not be read.

A group's status is the worst of its partitions'. The JSON form (`as_json`)
has stable field names, documented in docs/live-service.md (Lag monitoring).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, OffsetSpec
from kafka.errors import KafkaError, UnknownTopicOrPartitionError

from shared.broker.kafka_config import kafka_python_config
from shared.broker.kafka_retry import with_retries
from shared.broker.lag_status import LagStatus, worst
from shared.contract.config import Settings
from shared.contract.errors import ServiceUnavailable


class _FaustMetadataNoise(logging.Filter):
    """kafka-python warns on every describe of a Faust group (its member metadata is Faust's own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unable to decode member_metadata")


logging.getLogger("kafka.admin._groups").addFilter(_FaustMetadataNoise())

JSON_VERSION = 1
STALL_EVIDENCE_SECONDS = 6.0  # about two of the worker's commit intervals (faust's 2.8 s)


@dataclass(frozen=True)
class Sample:
    """One reading of one partition."""

    at: float  # unix seconds
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - (self.committed or 0))


@dataclass
class PartitionLag:
    topic: str
    role: str  # "worker": the prices agent (its events count once their embeddings are committed)
    partition: int
    committed: int | None
    end: int
    lag: int
    lag_seconds: float | None  # age of the oldest unconsumed record
    rate: float | None  # committed offsets per second over the window
    eta_seconds: float | None  # time to catch up at that rate
    status: LagStatus


@dataclass
class GroupLag:
    group: str
    state: str
    members: int
    status: LagStatus
    lag: int
    lag_seconds: float | None
    partitions: list[PartitionLag] = field(default_factory=list)
    error: str | None = None


@dataclass
class LagReport:
    at: float
    window_seconds: float
    groups: list[GroupLag]
    verdict_pending_seconds: float = 0.0  # more sampling a STALL verdict still needs (not in the JSON)

    def as_json(self) -> dict:
        return {
            "version": JSON_VERSION,
            "time": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="seconds"),
            "window_seconds": self.window_seconds,
            "groups": [asdict(g) for g in self.groups],
        }


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Log-end offset of each partition of `topic` (asked again while a broker is lost)."""
    tps = {TopicPartition(topic, p): OffsetSpec.LATEST for p in range(settings.partitions)}

    def attempt() -> dict[int, int]:
        admin = KafkaAdminClient(**kafka_python_config(settings), request_timeout_ms=15000)
        try:
            return {tp.partition: o.offset for tp, o in admin.list_partition_offsets(tps).items()}
        finally:
            admin.close()

    try:  # a topic just created is unknown for a moment (metadata propagating): asked again too
        return with_retries(f"reading the offsets of {topic}", attempt)
    except (KafkaError, OSError) as e:
        raise ServiceUnavailable(f"cannot read the offsets of {topic}: {e}") from None


def _unmoved_with_members(samples: list[Sample], has_members: bool) -> bool:
    """A member is in the group, lag > 0 in every sample, and the committed offset never moved."""
    return (
        has_members
        and len(samples) >= 2
        and all(s.lag > 0 for s in samples)
        and len({s.committed for s in samples}) == 1
    )


def stall_pending(samples: list[Sample], has_members: bool) -> float:
    """Seconds more the window must span before an unmoved offset may be judged STALL (0: decided)."""
    if not _unmoved_with_members(samples, has_members):
        return 0.0
    return max(0.0, STALL_EVIDENCE_SECONDS - (samples[-1].at - samples[0].at))


def judge(samples: list[Sample], has_members: bool) -> LagStatus:
    """Burrow-style status of one partition from its samples, oldest first."""
    latest = samples[-1]
    committed = [s.committed for s in samples if s.committed is not None]
    if any(b < a for a, b in zip(committed, committed[1:])):
        return LagStatus.REWIND  # the committed offset moved backwards (offsets reset, topic recreated)
    if latest.lag == 0 or any(s.lag == 0 for s in samples):
        return LagStatus.OK
    if not has_members:
        return LagStatus.STOP
    if _unmoved_with_members(samples, has_members):  # over a short span: undecided, not yet a STALL
        return LagStatus.STALL if stall_pending(samples, has_members) == 0 else LagStatus.OK
    lags = [s.lag for s in samples]
    if len(lags) >= 3 and all(b > a for a, b in zip(lags, lags[1:])):
        return LagStatus.WARN
    return LagStatus.OK


class LagMonitor:
    """Samples the worker group's offsets; `sample()` returns a report judged over the window."""

    def __init__(self, settings: Settings, window_seconds: float = 60.0, group: str | None = None):
        self.settings = settings
        self.window_seconds = max(window_seconds, STALL_EVIDENCE_SECONDS)  # a window that can tell a STALL
        self.group = group or settings.app_id
        self.roles = {settings.prices_topic: "worker"}
        self._history: dict[tuple[str, int], deque[Sample]] = {}
        self._admin = None
        self._consumer: KafkaConsumer | None = None

    def close(self) -> None:
        for client in (self._admin, self._consumer):
            if client is not None:
                client.close()
        self._admin = self._consumer = None

    def sample(self, patience_seconds: float = 10.0) -> LagReport:
        """One reading; a broker lost meanwhile is ridden out for `patience_seconds` (ERR only when no
        broker answers for that long)."""
        now = time.time()

        pending = [0.0]

        def attempt() -> GroupLag:
            try:
                group, pending[0] = self._read(now)
                return group
            except UnknownTopicOrPartitionError:
                raise
            except (KafkaError, OSError):
                self.close()  # new clients for the next attempt: another broker answers
                raise

        try:
            group = with_retries(
                f"reading the lag of group {self.group}",
                attempt,
                deadline_seconds=patience_seconds,
                final=(UnknownTopicOrPartitionError,),
            )
        except UnknownTopicOrPartitionError:
            group = GroupLag(
                self.group,
                "UNKNOWN",
                0,
                LagStatus.ERR,
                0,
                None,
                error=f"topics {', '.join(self.roles)} not found (no worker or replay created them yet)",
            )
        except Exception as e:  # noqa: BLE001 - a monitor reports ERR, it never takes its caller down
            self.close()  # reconnect next time
            group = GroupLag(self.group, "UNKNOWN", 0, LagStatus.ERR, 0, None, error=str(e).splitlines()[0][:300])
        return LagReport(now, self.window_seconds, [group], pending[0])

    def _clients(self):
        if self._admin is None:
            self._admin = KafkaAdminClient(**kafka_python_config(self.settings), request_timeout_ms=15000)
        if self._consumer is None:
            # It only peeks at the timestamp of each partition's first unconsumed record: no CRC
            # check (kafka-python's is pure Python when the crc32c package is missing, and it cost
            # the worker 16 % of its CPU), and as few bytes as the broker will send.
            self._consumer = KafkaConsumer(
                **kafka_python_config(self.settings),
                enable_auto_commit=False,
                group_id=None,
                request_timeout_ms=15000,
                check_crcs=False,
                max_partition_fetch_bytes=1024,
                fetch_max_bytes=65536,
            )
        return self._admin, self._consumer

    def _read(self, now: float) -> tuple[GroupLag, float]:
        """The group's lag judged over the window, and the seconds a STALL verdict still needs."""
        admin, consumer = self._clients()
        info = admin.describe_groups([self.group])[self.group]
        members = len(info.get("members") or [])
        state = info.get("group_state") or "UNKNOWN"
        tps = [TopicPartition(t, p) for t in self.roles for p in range(self.settings.partitions)]
        ends = {tp: o.offset for tp, o in admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps}).items()}
        starts = {
            tp: o.offset for tp, o in admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in tps}).items()
        }
        try:
            committed_all = admin.list_group_offsets({self.group: tps}).get(self.group, {})
        except KafkaError:
            if members or state not in ("Dead", "Empty"):
                raise
            committed_all = {}  # a group that never committed
        committed = {
            tp: (om.offset if om is not None and om.offset >= 0 else None)
            for tp, om in ((tp, committed_all.get(tp)) for tp in tps)
        }
        ages = self._oldest_unconsumed_ages(consumer, committed, starts, ends, now)
        partitions = []
        pending = 0.0
        for tp in tps:
            history = self._history.setdefault((tp.topic, tp.partition), deque())
            history.append(Sample(now, committed[tp], ends[tp]))
            while len(history) > 2 and now - history[1].at >= self.window_seconds:
                history.popleft()
            samples = list(history)
            first, latest = samples[0], samples[-1]
            pending = max(pending, stall_pending(samples, members > 0))
            span = latest.at - first.at
            rate = None
            if span > 0 and first.committed is not None and latest.committed is not None:
                rate = (latest.committed - first.committed) / span
            eta = latest.lag / rate if rate and rate > 0 else (0.0 if latest.lag == 0 else None)
            partitions.append(
                PartitionLag(
                    tp.topic,
                    self.roles[tp.topic],
                    tp.partition,
                    latest.committed,
                    latest.end,
                    latest.lag,
                    ages.get(tp),
                    None if rate is None else round(rate, 3),
                    None if eta is None else round(eta, 1),
                    judge(samples, members > 0),
                )
            )
        lag_seconds = [p.lag_seconds for p in partitions if p.lag_seconds is not None]
        group = GroupLag(
            self.group,
            state,
            members,
            worst([p.status for p in partitions]),
            sum(p.lag for p in partitions),
            max(lag_seconds) if lag_seconds else (0.0 if all(p.lag == 0 for p in partitions) else None),
            partitions,
        )
        return group, pending

    @staticmethod
    def _oldest_unconsumed_ages(consumer: KafkaConsumer, committed: dict, starts: dict, ends: dict, now: float) -> dict:
        """Seconds since the first unconsumed record of each lagging partition was written."""
        lagging = [tp for tp in ends if ends[tp] > (committed[tp] or 0)]
        ages: dict = {tp: 0.0 for tp in ends if tp not in lagging}
        if not lagging:
            return ages
        consumer.assign(lagging)
        for tp in lagging:
            consumer.seek(tp, max(committed[tp] or 0, starts[tp]))
        deadline = time.monotonic() + 5.0
        while len(ages) < len(ends) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500, max_records=len(lagging) * 50).items():
                if tp not in ages and records:
                    ages[tp] = round(max(0.0, now - records[0].timestamp / 1000.0), 3)
                    consumer.pause(tp)
        consumer.assign([])
        return ages
