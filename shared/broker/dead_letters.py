"""Reading the dead-letter topic: what was refused, why, and which price row it was.

Records are written by the worker (a message, or one row of a batch) and by the
live relay (a captured row, with its `prices_outbox` id); see
`shared.contract.messages.dead_letter_record`. Delivery is at least once, so the same row
can be reported more than once: `distinct_rows` counts each (row, reason) once.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from shared.broker.kafka_config import kafka_python_config
from shared.broker.kafka_refusals import topic_partitions
from shared.broker.kafka_retry import with_retries
from shared.contract.config import Settings
from shared.contract.errors import BadArguments, ServiceUnavailable

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`24h`, `30m`, `7d`, `90s`, an ISO date or an ISO date-time (UTC unless it says otherwise)."""
    now = now or datetime.now(UTC)
    relative = _RELATIVE.match(text)
    if relative:
        return now - timedelta(**{_UNITS[relative.group(2)]: float(relative.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadArguments(f"--since: not a time: {text!r} (e.g. 24h, 7d, 2026-11-23 or 2026-11-23T08:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DeadLetter:
    time: str
    reason: str
    topic: str | None
    partition: int | None
    offset: int | None
    run: str | None
    instrument_id: str | None
    trade_date: str | None
    payload: str

    @classmethod
    def parse(cls, timestamp_ms: int, value: bytes) -> DeadLetter:
        when = datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="seconds")
        try:
            record = json.loads(value)
        except ValueError:
            return cls(
                when,
                "unreadable dead-letter record",
                None,
                None,
                None,
                None,
                None,
                None,
                value[:4096].decode("utf-8", "replace"),
            )
        payload = record.get("payload") or ""
        run, instrument_id, trade_date = _row_of(payload)
        return cls(
            when,
            record.get("reason", "?"),
            record.get("topic"),
            record.get("partition"),
            record.get("offset"),
            run,
            instrument_id,
            trade_date,
            payload,
        )

    @property
    def source(self) -> str:
        if self.topic == "prices_outbox":
            return f"prices_outbox id {self.offset}"
        return f"{self.topic}[{self.partition}]@{self.offset}"


def _row_of(payload: str) -> tuple[str | None, str | None, str | None]:
    """(run, instrument_id, trade_date) named by a payload: a row of a batch, or a single-row message."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    row = data.get("row")
    if isinstance(row, list) and len(row) >= 2:
        ident, day = row[0], row[1]
    else:
        ident, day = data.get("i"), data.get("d")
    return (
        data.get("run") if isinstance(data.get("run"), str) else None,
        ident if isinstance(ident, str) else None,
        day if isinstance(day, str) else None,
    )


@dataclass
class DeadLetterReport:
    since: str | None
    total: int = 0
    by_reason: Counter = field(default_factory=Counter)
    distinct_rows: int = 0
    records: list[DeadLetter] = field(default_factory=list)
    """The newest records (up to the limit asked for), oldest first."""

    def as_json(self) -> dict:
        return {
            "version": 1,
            "since": self.since,
            "total": self.total,
            "distinct_rows": self.distinct_rows,
            "by_reason": dict(self.by_reason.most_common()),
            "records": [asdict(r) for r in self.records],
        }


def read_dead_letters(
    settings: Settings, since: datetime | None = None, limit: int = 100, timeout: float = 15.0
) -> DeadLetterReport:
    """Every dead letter since `since` (all retained ones without it), counted by reason; the newest
    `limit` kept in full. Reads the topic from the broker with no consumer group."""
    try:
        return with_retries(
            f"reading {settings.dead_letter_topic}",
            lambda: _read_dead_letters_once(settings, since, limit, timeout),
            deadline_seconds=60.0,
        )
    except (KafkaError, OSError) as e:
        raise ServiceUnavailable(
            f"cannot read {settings.dead_letter_topic} at {settings.kafka_bootstrap_servers}: {e}"
        ) from None


def _read_dead_letters_once(settings: Settings, since: datetime | None, limit: int, timeout: float) -> DeadLetterReport:
    report = DeadLetterReport(since.isoformat(timespec="seconds") if since else None)
    consumer = KafkaConsumer(
        **kafka_python_config(settings),
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=int(timeout * 1000) + 1000,
        consumer_timeout_ms=int(timeout * 1000),
    )
    try:
        partitions = topic_partitions(consumer, settings.dead_letter_topic, kafka_python_config(settings))
        if not partitions:
            return report
        tps = [TopicPartition(settings.dead_letter_topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        end = consumer.end_offsets(tps)
        start = consumer.beginning_offsets(tps)
        if since is not None:
            found = consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
            start = {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in tps}
        for tp in tps:
            consumer.seek(tp, start[tp])
        seen: set[tuple] = set()
        while any(consumer.position(tp) < end[tp] for tp in tps):
            batch = consumer.poll(timeout_ms=int(timeout * 1000))
            if not batch:
                raise ServiceUnavailable(f"reading {settings.dead_letter_topic} stalled for {timeout:.0f}s")
            for records in batch.values():
                for r in records:
                    if r.offset >= end[TopicPartition(r.topic, r.partition)]:
                        continue
                    letter = DeadLetter.parse(r.timestamp, r.value or b"")
                    report.total += 1
                    report.by_reason[letter.reason] += 1
                    seen.add(
                        (letter.reason, letter.instrument_id, letter.trade_date)
                        if letter.instrument_id
                        else (letter.reason, letter.source)
                    )
                    report.records.append(letter)
                    if len(report.records) > limit:
                        report.records.pop(0)
        report.distinct_rows = len(seen)
        report.records.sort(key=lambda r: r.time)
        return report
    finally:
        consumer.close()


def count_since(settings: Settings, since: datetime, timeout: float = 10.0) -> int:
    """How many dead letters arrived since `since` (offsets only: nothing is read)."""
    try:
        return with_retries(
            f"counting {settings.dead_letter_topic}",
            lambda: _count_since_once(settings, since, timeout),
            deadline_seconds=30.0,
        )
    except (KafkaError, OSError) as e:
        raise ServiceUnavailable(
            f"cannot read {settings.dead_letter_topic} at {settings.kafka_bootstrap_servers}: {e}"
        ) from None


def _count_since_once(settings: Settings, since: datetime, timeout: float) -> int:
    consumer = KafkaConsumer(
        **kafka_python_config(settings),
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=int(timeout * 1000) + 1000,
    )
    try:
        partitions = topic_partitions(consumer, settings.dead_letter_topic, kafka_python_config(settings))
        tps = [TopicPartition(settings.dead_letter_topic, p) for p in partitions]
        if not tps:
            return 0
        end = consumer.end_offsets(tps)
        found = consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
        return sum(end[tp] - (found[tp].offset if found.get(tp) else end[tp]) for tp in tps)
    finally:
        consumer.close()
