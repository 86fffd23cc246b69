"""Wire forms: row batches, the binary embedding batches, and how a replay orders its messages."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest

from backfill.blocks import RowsOut, TickOut, plan
from shared.broker.topics import partition_for
from shared.contract.messages import (
    MAX_MESSAGE_BYTES,
    BadMessage,
    RowBatch,
    Tick,
    decode,
    encode,
    loads,
    row_batches,
)
from shared.contract.validation import FUTURE_DATE, NON_POSITIVE_CLOSE, key_problem, latest_trade_date, row_problem


def test_row_batch_round_trip_with_rows_and_deletions():
    batch = RowBatch(
        "r1",
        63,
        [("A;'--", date(2020, 1, 2), 10.5, 0.0), ("é", date(2020, 1, 3), 1e-9, 3.0), ("A;'--", date(2020, 1, 2))],
    )
    assert decode(encode(batch)) == batch
    with pytest.raises(BadMessage, match="invalid field rows.w"):
        decode(b'{"k": "rows", "w": "x", "r": []}')


def test_a_bad_row_of_a_batch_is_rejected_alone_with_the_shared_rule_reason():
    future = (latest_trade_date() + timedelta(days=1)).isoformat()
    raw = (
        b'{"k":"rows","w":63,"r":[["A","2020-01-02",10.5,1],["B","2020-01-02",0,1],["C","'
        + future.encode()
        + b'",5,1],["D","2020-01-02","x",1],["E","2020-01-03",6,2]]}'
    )
    batch = decode(raw)
    assert batch.rows == [("A", date(2020, 1, 2), 10.5, 1.0), ("E", date(2020, 1, 3), 6.0, 2.0)]
    assert [reason for reason, _ in batch.rejected] == [
        NON_POSITIVE_CLOSE,
        FUTURE_DATE,
        "close or volume is not a number",
    ]
    assert batch.rows_total == 5


def as_date(text: object) -> date | None:
    try:
        return date.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def test_rows_after_a_good_row_of_the_same_id_and_day_are_judged_by_the_rule_each():
    """The decoder checks an id and a date text once per batch and takes rows like ones seen at once: every
    other row must still get the rule's reason, in the rule's order (id, then date, then values)."""
    future = (latest_trade_date() + timedelta(days=1)).isoformat()
    good = ["A", "2020-01-02", 10.5, 1.5]
    variants = [
        ["A", "2020-01-02", float("nan"), 1.5],
        ["A", "2020-01-02", float("inf"), 1.5],
        ["A", "2020-01-02", 10.5, float("-inf")],
        ["A", "2020-01-02", -1.0, 1.5],
        ["A", "2020-01-02", 10.5, -0.5],
        ["A", "2020-01-02", True, 1.5],
        ["A", "2020-01-02", "10.5", 1.5],
        ["A", "2020-01-02", 10, 2],  # integers are numbers
        ["A", "2020-01-02"],  # a deletion
        ["A", "2020-01-02", 10.5],
        ["A", future, 10.5, 1.5],
        ["A", "2020-13-02", 10.5, 1.5],
        ["A", 20200102, 10.5, 1.5],
        ["A\x01", "2020-01-02", 10.5, 1.5],
        ["", "2020-01-02", 10.5, 1.5],
        [None, "2020-01-02", 10.5, 1.5],
        ["A\x01", future, float("nan"), 1.5],  # the id's reason first
        ["B", future, float("nan"), 1.5],  # then the date's
        "A",
    ]
    latest = latest_trade_date()
    for variant in variants:
        batch = decode(json.dumps({"k": "rows", "w": 63, "r": [good, variant, good]}).encode())
        if isinstance(variant, list) and len(variant) in (2, 4):
            day = as_date(variant[1])
            rule = (
                key_problem(variant[0], day, latest)
                if len(variant) == 2
                else row_problem(variant[0], day, *variant[2:], latest)
            )
        else:
            rule = "a row is [instrument_id, trade_date, close, volume] or [instrument_id, trade_date]"
        assert [reason for reason, _ in batch.rejected] == ([rule] if rule else []), variant
        assert len(batch.rows) == (3 if rule is None else 2), variant
        assert batch.rows[0] == batch.rows[-1] == ("A", date(2020, 1, 2), 10.5, 1.5)


def test_row_batches_are_cut_by_encoded_size_whatever_the_id_length():
    """1,000 instruments with ids of the schema's full 50 characters (some needing JSON escapes)."""
    ids = [f"{k:04d}" + ("é", "a", "\\")[k % 3] * 46 for k in range(1000)]
    rows = [(i, date(2020, 1, 2) + timedelta(days=d), 123.456789 + d, 1e6 + d) for d in range(3) for i in ids]
    batches = list(row_batches("live", 63, rows))
    assert len(batches) > 1
    wire = [encode(b) for b in batches]
    assert max(len(w) for w in wire) <= MAX_MESSAGE_BYTES
    assert [r for w in wire for r in decode(w).rows] == rows  # nothing lost, order kept


def test_ticks_carry_many_dates_and_a_market():
    tick = Tick(
        d=date(2020, 1, 10), ds=(date(2020, 1, 8), date(2020, 1, 9)), w=63, m=("numeric-simple-v1",), mk="US_EQ", o=42
    )
    back = decode(encode(tick))
    assert back == tick and back.dates == (date(2020, 1, 8), date(2020, 1, 9), date(2020, 1, 10))
    assert back.scope == "US_EQ" and Tick(d=date(2020, 1, 10), w=63, m=("x",)).scope == "*"
    with pytest.raises(BadMessage, match="invalid tick"):
        decode(encode(Tick(d=date(2999, 1, 1), w=63, m=("numeric-simple-v1",))))


def test_replay_plan_sends_each_tick_after_every_row_up_to_it_on_every_partition():
    day0 = date(2020, 1, 1)
    rows = [(f"S{k}", day0 + timedelta(days=d), 1.0, 1.0) for d in range(60) for k in range(30)]
    ticks = [day0 + timedelta(days=d) for d in (10, 11, 40, 59)]
    out = list(plan(rows, 4, ticks, block_days=7))
    assert [d for o in out if isinstance(o, TickOut) for d in o.dates] == ticks
    assert [o.dates for o in out if isinstance(o, TickOut)] == [tuple(ticks[:2]), (ticks[2],), (ticks[3],)]
    assert sum(len(o.rows) for o in out if isinstance(o, RowsOut)) == len(rows)
    for t in ticks:
        pos = next(n for n, o in enumerate(out) if isinstance(o, TickOut) and t in o.dates)
        assert all(r[1] > t for o in out[pos:] if isinstance(o, RowsOut) for r in o.rows)
        # rows newer than the tick that precede it stay within one block
        assert all(r[1] < t + timedelta(days=7) for o in out[:pos] if isinstance(o, RowsOut) for r in o.rows)
    sent = [0] * 4
    for o in out:
        if isinstance(o, RowsOut):
            assert {partition_for(r[0], 4) for r in o.rows} == {o.partition}
            sent[o.partition] += len(o.rows)
        else:
            assert o.rows_sent == tuple(sent)  # what the worker checks it received before the tick


def test_a_block_ends_block_days_after_its_first_tick_and_a_look_back_is_one_block():
    day0 = date(2020, 1, 1)
    rows = [(f"S{k}", day0 + timedelta(days=d), 1.0, 1.0) for d in range(400) for k in range(5)]
    ticks = [day0 + timedelta(days=d) for d in range(200, 400, 3)]  # 200 days of look-back first
    out = list(plan(rows, 2, ticks, block_days=30))
    sent_since: list = []
    blocks = []
    for o in out:
        if isinstance(o, RowsOut):
            sent_since.extend(r[1] for r in o.rows)
        else:
            # every row the worker holds when this tick comes is within 30 days of its first date
            assert max(sent_since) < o.dates[0] + timedelta(days=30)
            blocks.append((min(sent_since), max(sent_since), o.dates))
            sent_since = []
    assert blocks[0][0] == day0 and blocks[0][1] >= day0 + timedelta(days=200)  # the look-back in block one
    assert [d for b in blocks for d in b[2]] == ticks and len(blocks) == 7


def test_messages_read_alike_whichever_parser_reads_them():
    """orjson reads the usual message; what it refuses and the json module accepts (NaN, a lone surrogate)
    is read by the json module: a bad row in a batch still costs only itself. (An integer beyond 64 bits
    comes back as the float it is read as anyway.)"""
    import json as stdlib_json

    from shared.contract.messages import loads

    usual = b'{"v":1,"run":"r","k":"rows","w":63,"r":[["A","2020-01-02",1.5,1e-05],["\\u00c9","2020-01-03",2,3]]}'
    assert loads(usual) == stdlib_json.loads(usual)
    for odd in (b"[NaN, 1.0]", b'["\\ud800"]'):
        assert repr(loads(odd)) == repr(stdlib_json.loads(odd))
    assert float(loads(b"[123456789012345678901234567890]")[0]) == 1.2345678901234568e29
    batch = decode(b'{"v":1,"run":"r","k":"rows","w":63,"r":[["A","2020-01-02",NaN,5.0],["B","2020-01-02",1.0,5.0]]}')
    assert [r[0] for r in batch.rows] == ["B"] and len(batch.rejected) == 1


def test_rows_encode_to_what_the_decoder_reads_back():
    from shared.contract.messages import row_wire

    rows = [
        ("A", date(2020, 1, 2), 1.5, 1e-05),
        ('É"\\x', date(2020, 1, 3), 2, 3.0),
        ("N", date(2020, 1, 6), float("nan"), 1.0),
        ("B", date(2020, 1, 7), 1.0, 2**70),
        ("D", date(2020, 1, 8)),
    ]
    for row in rows:
        back = loads(row_wire(row))
        assert back[0] == row[0] and back[1] == row[1].isoformat()
        assert repr([float(v) for v in back[2:]]) == repr([float(v) for v in row[2:]])  # nan too


def test_an_instruments_rows_encode_together_as_they_do_one_by_one():
    """`rows_wire` writes the usual rows in one call: the very bytes of the rows one by one, commas between;
    rows orjson cannot write as the json module does (NaN, infinities, a huge integer) go row by row."""
    from shared.contract.messages import row_wire, rows_wire

    usual = [("A", date(2020, 1, 2), 1.5, 1e-05), ('É"\\x', date(2020, 1, 3), 2, 3.0), ("D", date(2020, 1, 8))]
    assert rows_wire(usual) == b",".join(map(row_wire, usual))
    for odd in (float("nan"), float("inf"), 2**70):
        rows = [("A", date(2020, 1, 2), 1.5, 2.0), ("A", date(2020, 1, 3), odd, 2.0)]
        assert rows_wire(rows) == b",".join(map(row_wire, rows))
        assert repr(loads(b"[" + rows_wire(rows) + b"]")[1][2]) == repr(loads(row_wire(rows[1]))[2])
    named_null = [("null", date(2020, 1, 2), 1.5, 2.0)]
    assert rows_wire(named_null) == row_wire(named_null[0])


def test_a_replay_plan_sends_the_bytes_rows_encoded_one_by_one_would():
    """The planner encodes an instrument's rows at once and tests a block's end once per day: its messages
    are the ones of rows encoded one at a time, cut at the same rows, and a full block still ends mid-day."""
    from backfill.blocks import BlockPlanner

    day0 = date(2020, 1, 1)
    rows = [(f"S{k}", day0 + timedelta(days=d), 1.0 + k / 7, 1e6 + d) for d in range(200) for k in range(40)]
    ticks = [day0 + timedelta(days=d) for d in range(60, 200, 5)]
    planner = BlockPlanner(4, ticks, 30, max_bytes=800, max_block_rows=1_010)
    out = [*planner.feed(rows), *planner.finish()]
    batches = [o for o in out if isinstance(o, RowsOut)]
    assert [r for o in batches for r in o.rows] != rows and sorted(r for o in batches for r in o.rows) == sorted(rows)
    for o in batches:
        assert encode(RowBatch("r", 63, o.rows, wire=o.wire)) == encode(RowBatch("r", 63, o.rows))
        assert len(b",".join(o.wire)) + 1 <= 800
    # an instrument's block alone is more than a message (800 bytes): it is cut between its rows
    assert any(len({r[0] for r in o.rows}) == 1 and len(o.rows) > 1 for o in batches)
    # row by row (`add`, which tests a block's end at every row) plans the same messages: a block full at
    # 1,010 rows ends mid-day
    one_by_one = BlockPlanner(4, ticks, 30, max_bytes=800, max_block_rows=1_010)
    reference = [o for r in rows for o in one_by_one.add(*r)] + list(one_by_one.finish())
    assert [(type(o), getattr(o, "partition", None), getattr(o, "rows", o)) for o in out] == [
        (type(o), getattr(o, "partition", None), getattr(o, "rows", o)) for o in reference
    ]
    blocks_of_day: dict[date, set[int]] = {}  # a block sends its partitions in ascending order, once each
    block, last = 0, -1
    for o in out:
        if isinstance(o, TickOut) or o.partition < last:
            block += 1
        last = -1 if isinstance(o, TickOut) else o.partition
        for r in getattr(o, "rows", ()):
            blocks_of_day.setdefault(r[1], set()).add(block)
    assert any(len(b) > 1 for b in blocks_of_day.values())
    with pytest.raises(ValueError, match="at least one day"):
        BlockPlanner(4, ticks, 0)
