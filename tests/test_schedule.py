"""Daily ticks without a human: the decision as a pure function, then the scheduler on real PostgreSQL
with an injected clock (the outbox is where its ticks go; no broker needed to see them)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import psycopg

from live.schedule import DayCount, TickScheduler, due_ticks
from shared.contract.config import MarketSchedule, Settings

NY = "America/New_York"


def at(day: date, hh: int, mm: int = 0, zone: str = NY) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime.combine(day, time(hh, mm), ZoneInfo(zone)).astimezone(UTC)


def test_a_day_is_due_when_complete_or_at_its_deadline_within_the_catch_up_days():
    schedule = MarketSchedule(market_id="US_EQ", deadline=time(18, 30), timezone=NY, catch_up_days=3)
    d = date(2026, 11, 20)  # a Friday
    days = [
        DayCount(d - timedelta(days=7), 9),  # incomplete, past its deadline, older than the catch-up
        DayCount(d - timedelta(days=2), 10),  # complete
        DayCount(d - timedelta(days=1), 7),  # incomplete, deadline passed yesterday
        DayCount(d, 7),  # incomplete, deadline later today
        DayCount(d + timedelta(days=1), 0),
    ]  # nothing arrived
    due = due_ticks(schedule, 10, days, at(d, 17, 0))
    assert [(t.as_of, t.reason) for t in due] == [
        (d - timedelta(days=2), "complete"),
        (d - timedelta(days=1), "deadline"),
    ]
    later = due_ticks(schedule, 10, days[3:], at(d, 18, 30))  # 18:30 New York is the deadline
    assert [(t.as_of, t.reason, t.present) for t in later] == [(d, "deadline", 7)]
    assert due_ticks(MarketSchedule(market_id="US_EQ"), 10, days, at(d, 23)) == [
        due[0]
    ]  # without a deadline only complete days are ticked
    assert due_ticks(MarketSchedule(market_id="X", when_complete=False), 10, days, at(d, 23)) == []


def test_the_scheduler_ticks_each_market_day_once_on_a_real_database(db_url):
    with psycopg.connect(db_url) as conn:
        conn.execute("""INSERT INTO instruments (instrument_id, market_id, asset_class, symbol, currency, status)
                        VALUES ('A', 'US_EQ', 'EQUITY', 'A', 'USD', 'ACTIVE'),
                               ('B', 'US_EQ', 'EQUITY', 'B', 'USD', 'ACTIVE'),
                               ('C', 'US_EQ', 'EQUITY', 'C', 'USD', 'ACTIVE'),
                               ('F', 'US_EQ', 'FUTURE', 'F', 'USD', 'ACTIVE'),
                               ('J', 'JP_EQ', 'EQUITY', 'J', 'JPY', 'ACTIVE')""")
        for k, d in enumerate((date(2019, 12, 18), date(2019, 12, 19))):
            conn.execute(
                """INSERT INTO prices_daily (instrument_id, trade_date, open, high, low, close, adjusted_close,
                            volume, currency) SELECT i, %s, 1, 1, 1, %s, 1, 1, 'USD' FROM unnest(%s::text[]) i""",
                (d, 10.0 + k, ["A", "B", "C", "J"]),
            )
    clock = {"now": at(date(2019, 12, 20), 9)}
    settings = Settings(
        _env_file=None,
        database_url=db_url,
        schedule_check_seconds=0.001,
        tick_schedule=(MarketSchedule(market_id="US_EQ", deadline=time(18, 0), timezone=NY),),
    )
    scheduler = TickScheduler(settings, clock=lambda: clock["now"])

    def insert_day(day: date, ids: list[str]) -> None:
        with psycopg.connect(db_url) as conn:
            conn.execute(
                """INSERT INTO prices_daily (instrument_id, trade_date, open, high, low, close,
                            adjusted_close, volume, currency) SELECT i, %s, 1, 1, 1, 12, 1, 1, 'USD'
                            FROM unnest(%s::text[]) i""",
                (day, ids),
            )

    def check(hour: int, day: date = date(2019, 12, 20)) -> list[tuple]:
        clock["now"] = at(day, hour)
        with psycopg.connect(db_url, autocommit=True) as conn:
            return [(t.as_of, t.reason, t.present, t.expected) for t in scheduler(conn)]

    assert check(9) == []  # first sight: 2019-12-19 is the baseline, history is not ticked
    insert_day(date(2019, 12, 20), ["A", "B", "F"])  # C is late; F is not an equity
    assert check(17) == []  # 2 of 3 before the deadline
    assert check(18) == [(date(2019, 12, 20), "deadline", 2, 3)]
    assert check(19) == []  # never twice, even when C arrives late (a correction re-emits it)
    insert_day(date(2019, 12, 20), ["C"])
    assert check(20) == []
    insert_day(date(2019, 12, 23), ["A", "B", "C"])
    assert check(8, date(2019, 12, 23)) == [(date(2019, 12, 23), "complete", 3, 3)]
    with psycopg.connect(db_url) as conn:
        ticks = conn.execute("""SELECT trade_date, market_id, window_days, model_ids FROM prices_outbox
                                WHERE kind = 'tick' ORDER BY id""").fetchall()
        scheduled = conn.execute("""SELECT as_of_date, reason FROM embedder_scheduled_ticks WHERE market_id = 'US_EQ'
                                    ORDER BY as_of_date""").fetchall()
    assert ticks == [
        (date(2019, 12, 20), "US_EQ", 63, ["num-regime-core-v1"]),
        (date(2019, 12, 23), "US_EQ", 63, ["num-regime-core-v1"]),
    ]
    assert scheduled == [
        (date(2019, 12, 19), "baseline"),
        (date(2019, 12, 20), "deadline"),
        (date(2019, 12, 23), "complete"),
    ]


def test_the_due_and_committed_days_a_deadline_alert_compares(db_url):
    from prometheus_client import CollectorRegistry

    from shared.metrics import StreamMetrics

    with psycopg.connect(db_url) as conn:
        conn.execute("""INSERT INTO instruments (instrument_id, market_id, asset_class, symbol, currency)
                        VALUES ('A', 'US_EQ', 'EQUITY', 'A', 'USD')""")
        for d in (date(2019, 12, 19), date(2019, 12, 20)):
            conn.execute(
                """INSERT INTO prices_daily (instrument_id, trade_date, open, high, low, close, adjusted_close,
                            volume, currency) VALUES ('A', %s, 1, 1, 1, 1, 1, 1, 'USD')""",
                (d,),
            )
        conn.execute("""INSERT INTO embedder_scheduled_ticks (market_id, as_of_date, reason)
                        VALUES ('US_EQ', '2019-12-18', 'baseline')""")
    metrics = StreamMetrics.create(CollectorRegistry())
    settings = Settings(
        _env_file=None,
        database_url=db_url,
        partitions=2,
        schedule_check_seconds=0.001,
        tick_schedule=(MarketSchedule(market_id="US_EQ", deadline=time(18, 0), timezone=NY),),
    )
    clock = {"now": at(date(2019, 12, 20), 12)}
    scheduler = TickScheduler(settings, clock=lambda: clock["now"], metrics=metrics)
    scheduler.GAUGE_SECONDS = 0
    due = lambda: metrics.market_tick_due.labels("US_EQ")._value.get()  # noqa: E731
    committed = lambda: metrics.market_tick_committed.labels("US_EQ")._value.get()  # noqa: E731
    midnight = lambda d: datetime.combine(d, time(0), UTC).timestamp()  # noqa: E731
    with psycopg.connect(db_url, autocommit=True) as conn:
        scheduler(conn)  # before 18:00 New York: the 19th's deadline has passed, the 20th's not yet
        assert (due(), committed()) == (midnight(date(2019, 12, 19)), 0)
        clock["now"] = at(date(2019, 12, 20), 19)
        scheduler(conn)  # the deadline tick of the 20th is queued, not committed: the alert's condition
        assert (due(), committed()) == (midnight(date(2019, 12, 20)), 0)
        for p in range(2):  # the sink commits the tick on both partitions
            conn.execute(
                """INSERT INTO embedder_tick_commits (run_id, scope, source_partition, as_of_date, embeddings)
                            VALUES ('live', 'US_EQ', %s, '2019-12-20', 1)""",
                (p,),
            )
        clock["now"] = at(date(2019, 12, 20), 20)
        scheduler(conn)
        assert committed() == due() == midnight(date(2019, 12, 20))
