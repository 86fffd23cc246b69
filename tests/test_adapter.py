"""The commit order (`streams.adapter.PricesAdapter.apply_effects`) driven with fake tables, sink and dead-letter
topic, as the worker drives it with faust's: what each step does, and one test per failure branch — the
dead-letter send fails, the sink raises, a state write raises, the partition is revoked mid-event. No
broker, no database (quix-streams' checkpoint tests are the model)."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import pytest

from shared.contract.messages import LIVE_RUN, RowBatch, Tick
from tests.support.fakes import Event, Table
from tests.support.fakes import World as SupportWorld

W = 10
MODELS = ("numeric-simple-v1",)
IDS = ["A", "B"]


def World(windows: Table | None = None, runs: Table | None = None) -> SupportWorld:
    return SupportWorld(IDS, W, windows, runs)


DAY0 = date(2020, 1, 1)


def with_bad_row(day: date, instrument_id: str = "A") -> bytes:
    """A live row batch correcting `instrument_id` on `day`, beside a row with a negative close (a dead letter)."""
    return (
        f'{{"v":1,"run":"live","k":"rows","w":{W},"r":[["{instrument_id}","{day}",99.0,1.0],["B","{day}",-1.0,1.0]]}}'
    ).encode()


def rows(days: int) -> list[tuple]:
    return [
        (i, DAY0 + timedelta(days=n), 10.0 + k + n * 0.1, 100.0 + n)
        for n in range(days)
        for k, i in enumerate(IDS)
        if (DAY0 + timedelta(days=n)).weekday() < 5
    ]


def ticked(world: World, days: int = 40) -> date:
    """History through the world, and a tick of its last day; returns that day."""
    history = rows(days)
    world.feed(0, RowBatch(LIVE_RUN, W, history))
    last = history[-1][1]
    world.feed(1, Tick(d=last, w=W, m=MODELS))
    return last


def test_rows_write_state_then_ack_and_a_tick_is_acked_by_the_sink_after_its_commit():
    w = World()
    last = ticked(w)
    assert w.log[-3:] == ["sink", "state", "ack"] and "dead letter" not in w.log  # the sink acks after its commit
    assert w.log.index("state") < w.log.index("ack")  # the rows' state before their ack
    assert [(i, d) for b in w.sink.committed for i, d, _, v in b.items if v] == [("A", last), ("B", last)]


def test_a_correction_waits_for_the_sink_and_its_dead_letters_before_its_state():
    w = World()
    last = ticked(w)
    del w.log[:]
    # A correction of the ticked day, and a bad row beside it (a dead letter).
    w.feed(2, with_bad_row(last))
    assert w.log == ["dead letter", "dead letter acknowledged", "sink", "state", "state", "ack"]


def test_a_dead_letter_send_that_fails_writes_no_state_and_acks_nothing():
    w = World()
    last = ticked(w)
    state = (dict(w.windows), dict(w.runs))
    w.dead.fail_send = True
    with pytest.raises(OSError, match="broker away"):
        w.feed(2, with_bad_row(last))
    assert (dict(w.windows), dict(w.runs)) == state and w.log[-1] == "ack"  # the earlier tick's, not this one
    assert w.adapter.processors[0].state.cached_windows == 0  # caches that may hold unapplied writes are dropped


def test_a_dead_letter_kafka_does_not_acknowledge_writes_no_state():
    w = World()
    last = ticked(w)
    state = (dict(w.windows), dict(w.runs))
    w.dead.fail_ack = True
    with pytest.raises(OSError, match="not acknowledged"):
        w.feed(2, with_bad_row(last))
    assert (dict(w.windows), dict(w.runs)) == state


def test_a_sink_that_raises_writes_no_state_and_the_event_comes_again_to_the_same_effect():
    w = World()
    last = ticked(w)
    state = (dict(w.windows), dict(w.runs))
    w.sink.fail = True
    correction = RowBatch(LIVE_RUN, W, [("A", last, 99.0, 1.0)])
    with pytest.raises(OSError, match="sink failed"):
        w.feed(2, correction)
    assert (dict(w.windows), dict(w.runs)) == state  # the correction is not recorded as applied
    w.sink.fail = False
    event = w.feed(2, correction)  # re-delivered: applied now, with its output
    assert event.acked and [v for b in w.sink.committed[-1:] for i, d, _, v in b.items if i == "A" and d == last]


def test_a_state_write_that_raises_leaves_the_event_unacked_and_its_redelivery_completes_it():
    w = World()
    last = ticked(w)
    w.windows.fail = True
    correction = RowBatch(LIVE_RUN, W, [("B", last, 55.0, 2.0)])
    with pytest.raises(OSError, match="state write failed"):
        w.feed(2, correction)
    assert w.log[-1] == "sink"  # its output was committed; the event was not acked
    w.windows.fail = False
    again = World(w.windows, w.runs)  # a restart: the tables as the changelog restores them
    event = again.feed(2, correction)
    assert event.acked and again.sink.committed  # the correction is applied and emitted again


def test_a_revocation_while_an_event_waits_for_the_sink_drops_the_caches_and_the_event_still_completes():
    w = World()
    last = ticked(w)
    correction = RowBatch(LIVE_RUN, W, [("A", last, 77.0, 3.0)])

    async def scenario() -> Event:
        w.sink.release = asyncio.Event()
        event = Event(0, 2, correction, w.log)
        running = asyncio.create_task(w.adapter.on_event(event))
        await asyncio.sleep(0)
        w.adapter.revoked()  # faust waits for the event in flight (stream_wait_empty) before recovery
        w.sink.release.set()
        await running
        return event

    event = asyncio.run(scenario())
    assert event.acked and w.adapter.processors == {}
    emitted = len(w.sink.committed)
    redelivered = w.feed(2, correction)  # a fresh processor reads the state: the offset is applied already
    assert redelivered.acked and len(w.sink.committed) == emitted


def test_a_bad_message_costs_exactly_itself():
    w = World()
    event = w.feed(0, b"{not json")
    assert event.acked and len(w.dead.sent) == 1 and b"not json" in w.dead.sent[0]
    assert ticked(w) is not None  # the partition carries on
