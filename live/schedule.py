"""Daily ticks without a human: tick a market's day once all its instruments have a row, or at a deadline.

Per market (settings `tick_schedule`): day D is ticked as soon as every ACTIVE
EQUITY instrument of the market has its row for D ("complete"), or at the
market's deadline on D (local time in its timezone) with whatever has arrived
("deadline"). Never twice: `embedder_scheduled_ticks` has one row per market and
day, written in the same transaction as the tick. Rows that arrive after a
deadline tick are late rows: the stream re-emits what they change, so the day
still ends equal to `replay --direct` without a second tick.

Which days are considered: trade dates of rows captured in the outbox for the
market (new data, not history), after the market's baseline. The baseline is the
newest day present when the schedule first sees the market (so a first start
never ticks years of history), then the newest scheduled day minus
`catch_up_days`; the deadline applies only to days within `catch_up_days` of
today. Older days are ticked by hand (`embedder tick`) or replayed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg

from live.bootstrap import enqueue_tick
from shared.contract.config import MarketSchedule, Settings
from shared.contract.validation import latest_trade_date
from shared.store import scheduled_ticks
from shared.store.db import one
from shared.store.instruments import SELECTABLE, newest_trade_date, newest_trade_date_sql
from shared.store.outbox import captured_days
from shared.store.tick_commits import newest_day_committed_everywhere

log = logging.getLogger("embedder.schedule")


@dataclass(frozen=True)
class DayCount:
    """How many of a market's instruments have their row for a day."""

    as_of: date
    present: int


@dataclass(frozen=True)
class DueTick:
    as_of: date
    reason: str  # "complete" or "deadline"
    present: int
    expected: int


def due_ticks(schedule: MarketSchedule, expected: int, days: list[DayCount], now: datetime) -> list[DueTick]:
    """The ticks to queue now, oldest day first (pure: no clock or database inside)."""
    zone = ZoneInfo(schedule.timezone)
    local_now = now.astimezone(zone)
    due = []
    for day in sorted(days, key=lambda d: d.as_of):
        if schedule.when_complete and expected > 0 and day.present >= expected:
            due.append(DueTick(day.as_of, "complete", day.present, expected))
        elif (
            schedule.deadline is not None
            and day.present > 0
            and day.as_of >= local_now.date() - timedelta(days=schedule.catch_up_days)
            and local_now >= datetime.combine(day.as_of, schedule.deadline, zone)
        ):
            due.append(DueTick(day.as_of, "deadline", day.present, expected))
    return due


def market_days(conn: psycopg.Connection, market_id: str, catch_up_days: int) -> tuple[int, list[DayCount]]:
    """(selectable instruments, candidate days with their row counts) of a market; records the
    market's baseline the first time it is seen."""
    latest = latest_trade_date()
    baseline, newest = scheduled_ticks.bounds(conn, market_id)
    if baseline is None:
        baseline = newest_trade_date(conn, latest, market_id)
        if baseline is None:
            return 0, []
        scheduled_ticks.record_baseline(conn, market_id, baseline)
        log.warning("tick schedule of %s starts after %s (the newest day present now)", market_id, baseline)
    else:
        assert newest is not None  # a baseline is a scheduled day
        baseline = max(baseline, newest - timedelta(days=catch_up_days))
    rows = captured_days(conn, market_id, baseline, latest)
    expected = one(
        conn.execute(f"SELECT count(*) FROM instruments WHERE market_id = %s AND {SELECTABLE}", (market_id,))
    )[0]
    return expected, [DayCount(d, n) for d, n in rows]


def due_and_committed(
    conn: psycopg.Connection, schedule: MarketSchedule, now: datetime, partitions: int
) -> tuple[date | None, date | None]:
    """(the newest day of the market with rows whose deadline has passed, after its baseline; the
    newest day whose live tick of the market is committed on every partition) — what the alert
    EmbedderTickMissedDeadline compares."""
    local_now = now.astimezone(ZoneInfo(schedule.timezone))
    last = (
        local_now.date()
        if schedule.deadline is None or local_now.time() >= schedule.deadline
        else local_now.date() - timedelta(days=1)
    )
    due = one(
        conn.execute(
            f"""SELECT max({newest_trade_date_sql("i", "%(last)s")})
            FROM instruments i WHERE i.market_id = %(m)s AND {SELECTABLE}""",
            {"last": last, "m": schedule.market_id},
        )
    )[0]
    baseline, _ = scheduled_ticks.bounds(conn, schedule.market_id)
    committed = newest_day_committed_everywhere(conn, schedule.market_id, partitions)
    if due is not None and baseline is not None and due <= baseline:
        due = None  # history: the schedule never ticks it
    return due, committed


def _midnight(day: date | None) -> float:
    return 0.0 if day is None else datetime.combine(day, datetime.min.time(), UTC).timestamp()


class TickScheduler:
    """Checks every market of the schedule at most every `check_seconds` (the relay calls it when idle)."""

    GAUGE_SECONDS = 30.0

    def __init__(self, settings: Settings, clock=lambda: datetime.now(UTC), metrics=None):
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self._checked_at: datetime | None = None
        self._gauged_at: datetime | None = None

    def __call__(self, conn: psycopg.Connection) -> list[DueTick]:
        now = self.clock()
        if not self.settings.tick_schedule or (
            self._checked_at and (now - self._checked_at).total_seconds() < self.settings.schedule_check_seconds
        ):
            return []
        self._checked_at = now
        queued = []
        for schedule in self.settings.tick_schedule:
            with conn.transaction():
                expected, days = market_days(conn, schedule.market_id, schedule.catch_up_days)
                for due in due_ticks(schedule, expected, days, now):
                    outbox_id = enqueue_tick(
                        conn,
                        due.as_of,
                        schedule.window_days or self.settings.window_days,
                        list(schedule.model_ids or self.settings.live_model_ids),
                        schedule.market_id,
                        self.settings.bootstrap_chunk_instruments,
                    )
                    scheduled_ticks.record_tick(
                        conn, schedule.market_id, due.as_of, due.reason, due.present, due.expected, outbox_id
                    )
                    log.warning(
                        "scheduled tick %s %s: %s (%d of %d instruments have their row)",
                        schedule.market_id,
                        due.as_of,
                        due.reason,
                        due.present,
                        due.expected,
                    )
                    queued.append(due)
        self._export(conn, now)
        return queued

    def _export(self, conn: psycopg.Connection, now: datetime) -> None:
        """The due and committed days per market with a deadline, as gauges (every half minute)."""
        if self.metrics is None or (self._gauged_at and (now - self._gauged_at).total_seconds() < self.GAUGE_SECONDS):
            return
        self._gauged_at = now
        for schedule in self.settings.tick_schedule:
            if schedule.deadline is None:
                continue
            due, committed = due_and_committed(conn, schedule, now, self.settings.partitions)
            self.metrics.market_tick_due.labels(schedule.market_id).set(_midnight(due))
            self.metrics.market_tick_committed.labels(schedule.market_id).set(_midnight(committed))


def deadline_of(schedule: MarketSchedule, day: date) -> datetime | None:
    """When the deadline of `day` falls (for the status command)."""
    if schedule.deadline is None:
        return None
    return datetime.combine(day, schedule.deadline, ZoneInfo(schedule.timezone))
