"""Wire forms: row batches, the binary embedding batches, and how a replay orders its messages."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from backfill.blocks import RowsOut, TickOut, plan
from backfill.publisher import partition_for
from shared.messages import (
    MAX_EMBEDDING_MESSAGE_BYTES,
    BadMessage,
    RowBatch,
    chunk_embeddings,
    decode,
    decode_embeddings,
    encode,
    encode_embeddings,
)


def test_row_batch_round_trip():
    batch = RowBatch(run="r1", w=63, r=[("A;'--", date(2020, 1, 2), 10.5, 0.0), ("é", date(2020, 1, 3), 1e-9, 3.0)])
    assert decode(encode(batch)) == batch
    with pytest.raises(BadMessage, match="invalid field rows.r"):
        decode(b'{"k": "rows", "w": 63, "r": [["A", "2020-01-02", "x", 1]]}')


def test_embedding_batches_round_trip_and_stay_under_the_size_limit():
    vector = bytes(range(256)) * 6  # 1536 bytes: 384 float32
    items = [(f"I{k}", date(2020, 1, 2), "num-regime-core-v1", vector) for k in range(800)]
    batches = chunk_embeddings("live", 63, 5, items, done_as_of=date(2020, 1, 2))
    assert len(batches) > 1
    wire = [encode_embeddings(b) for b in batches]
    assert all(len(w) <= MAX_EMBEDDING_MESSAGE_BYTES + 4096 for w in wire)
    back = [decode_embeddings(w) for w in wire]
    assert [i for b in back for i in b.items] == items
    assert [b.done_as_of for b in back] == [None] * (len(back) - 1) + [date(2020, 1, 2)]
    assert back[-1].done_count == 800 and back[-1].partition == 5
    empty = chunk_embeddings("live", 63, 0, [], done_as_of=date(2020, 1, 3))
    assert len(empty) == 1 and decode_embeddings(encode_embeddings(empty[0])).done_count == 0
    assert chunk_embeddings("live", 63, 0, []) == []
    with pytest.raises(BadMessage):
        decode_embeddings(wire[0][:-1])


def test_replay_plan_sends_each_tick_after_every_row_up_to_it_on_every_partition():
    day0 = date(2020, 1, 1)
    rows = [(f"S{k}", day0 + timedelta(days=d), 1.0, 1.0) for d in range(60) for k in range(30)]
    ticks = [day0 + timedelta(days=d) for d in (10, 11, 40, 59)]
    out = list(plan(rows, 4, ticks, block_days=7))
    assert [o.as_of for o in out if isinstance(o, TickOut)] == ticks
    assert sum(len(o.rows) for o in out if isinstance(o, RowsOut)) == len(rows)
    for t in ticks:
        pos = next(n for n, o in enumerate(out) if isinstance(o, TickOut) and o.as_of == t)
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
