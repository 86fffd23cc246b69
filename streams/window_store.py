"""How a `Window` is kept in a state table: a head and sealed chunks, so a day's rows rewrite the head only.

A window of 63 trading days keeps ~130 rows (its look-back); written whole, every live day would put
~2.6 KB per instrument into the changelog. Here rows are grouped by calendar chunk (`CHUNK_DAYS` days,
about 22 trading days, shifted per window by `chunk_phase`). The value under the window's key, the head,
holds the header (applied source offset, horizon, stamp), the list of sealed chunks, and the rows of the
newest chunk; each older chunk is a value of its own under `key \\x1f <chunk>` (the offset of the event that
wrote it, then its rows). A day appended to the newest chunk writes the head alone (its rows and ~60 bytes
of header); a chunk is written again only when a row of it changes or the head moves past it, and deleted
when the horizon passes its last row. Rows below the horizon may stay in a chunk until then; reads drop
them. Restoring from the changelog never takes a value written at an older offset than the one stored
(`replaces`).

Writes of one event list the chunks before the head, and the head records the offset: if a chunk of an
event were lost while its head was kept, reading finds a listed chunk missing and reports the window
as lost (`Window` with no offset and no rows), so it is loaded again from prices_daily.

Live heads are not values of their own: a partition's heads are kept in blocks
(`shared.broker.topics.head_block`: the instrument's id hashed), each one value under
`live \x1f \x1f <partition> \x1f <block>` holding the offset of the event that wrote it and every head of
its instruments. A live day then writes one value per block instead of one
per instrument: a changelog record (with faust's futures, callbacks and RocksDB write) costs the worker far
more than its bytes, and a day of 5,000 instruments wrote 5,000 of them. Restoring merges a block record
into the stored block head by head (`merge_blocks`), each head kept at the newer offset, so the guard
against a frozen worker's late writes holds per window as before.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from shared.broker.topics import head_block
from streams.state import LIVE_PREFIX, SEP, StateView
from streams.window import NO_OFFSET, NOTHING_DROPPED, ROW, Window

CHUNK_DAYS = 32
HEAD = struct.Struct("<qiHq")  # applied offset, horizon, number of sealed chunks, stamp
CHUNK_HEAD = struct.Struct("<q")  # the applied offset of the event that wrote the chunk
CHUNK_ID = np.dtype("<i4")
EMPTY_ROWS = np.empty(0, dtype=ROW)
LOST = Window(NO_OFFSET, NOTHING_DROPPED, EMPTY_ROWS)
BLOCK_HEAD = struct.Struct("<qI")  # the offset of the event that wrote the block, number of heads
BLOCK_ENTRY = struct.Struct("<HI")  # key length, head length


def chunk_key(key: str, chunk: int) -> str:
    return f"{key}{SEP}{chunk}"


def chunk_phase(key: str) -> int:
    """Days a window's chunks are shifted by (its key hashed): the windows of a market do not all seal a chunk,
    or drop their oldest one, on the same day (a day that rewrote every window of 20,000 at once)."""
    return zlib.crc32(key.encode()) % CHUNK_DAYS


def chunk_of(day: int, phase: int) -> int:
    return (day + phase) // CHUNK_DAYS


def chunk_bounds(days: np.ndarray, phase: int = 0) -> list[tuple[int, int, int]]:
    """(chunk, first row, end row) of each chunk of ascending `days` that holds rows, ascending: one
    search for every chunk boundary (a live day computes this for each of its thousands of windows)."""
    if not days.size:
        return []
    first, last = chunk_of(int(days[0]), phase), chunk_of(int(days[-1]), phase)
    if first == last:
        return [(first, 0, int(days.size))]
    starts_at = np.arange(first + 1, last + 1, dtype=days.dtype) * CHUNK_DAYS - phase
    edges = days.searchsorted(starts_at).tolist()
    starts, ends = [0, *edges], [*edges, int(days.size)]
    return [(first + k, lo, hi) for k, (lo, hi) in enumerate(zip(starts, ends)) if hi > lo]


def chunks_of(days: np.ndarray, phase: int = 0) -> list[int]:
    """The distinct chunks of ascending `days`, ascending."""
    return [chunk for chunk, _, _ in chunk_bounds(days, phase)]


def layout(window: Window, phase: int = 0) -> tuple[int | None, list[int]]:
    """(the head's chunk, the sealed chunks) of a window's rows: the head holds the newest chunk."""
    chunks = chunks_of(window.days, phase)
    return (chunks[-1], chunks[:-1]) if chunks else (None, [])


def read(table: StateView, key: str) -> Window:
    """The window stored under `key` with its head as a value of its own (a replay's; the live run's heads
    are in blocks, `PartitionState` reads them): an empty window when there is none; `LOST` when a chunk
    is missing."""
    return parse_head(key, table.get(key), table)


def parse_head(key: str, head: bytes | None, table: StateView) -> Window:
    """The window of `key` from its head value and its sealed chunks in `table`."""
    if not head:
        return LOST
    offset, horizon, n, stamp = HEAD.unpack_from(head)
    sealed = np.frombuffer(head, dtype=CHUNK_ID, count=n, offset=HEAD.size)
    parts = []
    for chunk in sealed.tolist():
        value = table.get(chunk_key(key, chunk))
        if value is None:
            return LOST
        parts.append(np.frombuffer(value, dtype=ROW, offset=CHUNK_HEAD.size))
    parts.append(np.frombuffer(head, dtype=ROW, offset=HEAD.size + CHUNK_ID.itemsize * n))
    rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if rows.size and int(rows["day"][0]) < horizon:
        rows = rows[int(np.searchsorted(rows["day"], horizon)) :]
    return Window(offset, horizon, rows, stamp)


def block_of(key: str) -> int:
    """The head block of a live window key (`shared.broker.topics.head_block` of its instrument)."""
    return head_block(key[len(LIVE_PREFIX) :])


def block_key(partition: int, block: int) -> str:
    """The key of a partition's head block: an empty instrument id, so no window key can be it."""
    return f"{LIVE_PREFIX}{SEP}{partition}{SEP}{block}"


def encode_block(offset: int, heads: Mapping[str, bytes]) -> bytes:
    """A head block: the offset of the event that wrote it, then (key, head) entries."""
    parts = [BLOCK_HEAD.pack(offset, len(heads))]
    for key, head in heads.items():
        encoded = key.encode()
        parts.append(BLOCK_ENTRY.pack(len(encoded), len(head)))
        parts.append(encoded)
        parts.append(head)
    return b"".join(parts)


def decode_block(value: bytes | None) -> tuple[int, dict[str, bytes]]:
    """(the offset that wrote it, heads by key) of a block value (NO_OFFSET and none for no value)."""
    if not value:
        return NO_OFFSET, {}
    offset, n = BLOCK_HEAD.unpack_from(value)
    at = BLOCK_HEAD.size
    heads: dict[str, bytes] = {}
    for _ in range(n):
        key_len, head_len = BLOCK_ENTRY.unpack_from(value, at)
        at += BLOCK_ENTRY.size
        key = value[at : at + key_len].decode()
        at += key_len
        heads[key] = value[at : at + head_len]
        at += head_len
    return offset, heads


def merge_blocks(stored: bytes | None, incoming: bytes) -> bytes:
    """The block a restore keeps when `incoming` is read over `stored`: per head, the one written at the newer
    source offset (a frozen worker's late block takes back no window another worker moved on; live heads
    are never deleted, so a head missing from `incoming` is kept)."""
    if not stored:
        return incoming
    old_offset, heads = decode_block(stored)
    new_offset, newer = decode_block(incoming)
    for key, head in newer.items():
        held = heads.get(key)
        if held is None or HEAD.unpack_from(head)[0] >= HEAD.unpack_from(held)[0]:
            heads[key] = head
    return encode_block(max(old_offset, new_offset), heads)


def _head_value(window: Window, rows: np.ndarray, sealed: list[int]) -> bytes:
    return (
        HEAD.pack(window.applied_offset, window.horizon, len(sealed), window.stamp)
        + struct.pack(f"<{len(sealed)}i", *sealed)
        + rows.tobytes()
    )


def writes(
    key: str,
    before: Window,
    after: Window | None,
    changed_days: Iterable[int] = (),
    chunked: bool = True,
    before_head: bytes | None = None,
) -> dict[str, bytes | None]:
    """The table writes that turn the stored `before` into `after` (None: delete the window): chunks first,
    the head last. `changed_days` are the days the event changed (their chunks are rewritten); `before_head`,
    when given, is the head value `before` was read from (the usual live day then takes its sealed chunks
    from it instead of laying out every row again).

    Unchunked (a replay's windows: written once per block of ~120 days and deleted when the run ends) the
    head holds every row: one value per window and block, not one per chunk."""
    if not chunked:
        return {key: None if after is None else _head_value(after, after.rows, [])}
    phase = chunk_phase(key)
    if after is None:
        return {**{chunk_key(key, c): None for c in layout(before, phase)[1]}, key: None}
    if before_head is not None and after.rows.size:
        appended = _appended_head(before_head, before, after, changed_days, phase)
        if appended is not None:
            return {key: appended}
        head = chunk_of(int(after.days[-1]), phase)
        if all(chunk_of(int(d), phase) == head for d in changed_days) and _head_only(
            before, after, {head}, head, phase
        ):
            n = HEAD.unpack_from(before_head)[2]  # the sealed chunks are those stored: the head's rows follow them
            start = int(after.days.searchsorted(head * CHUNK_DAYS - phase)) if n else 0
            sealed = before_head[HEAD.size : HEAD.size + CHUNK_ID.itemsize * n]
            value = (
                HEAD.pack(after.applied_offset, after.horizon, n, after.stamp) + sealed + after.rows[start:].tobytes()
            )
            return {key: value}
    bounds = chunk_bounds(after.days, phase)
    new_head = bounds[-1][0] if bounds else None
    new_sealed = [chunk for chunk, _, _ in bounds[:-1]]
    head_rows = after.rows[bounds[-1][1] : bounds[-1][2]] if bounds else EMPTY_ROWS
    touched = {chunk_of(int(d), phase) for d in changed_days}
    if _head_only(before, after, touched, new_head, phase):  # the usual live day: rows of the newest chunk
        return {key: _head_value(after, head_rows, new_sealed)}
    old_head, old_sealed = layout(before, phase)
    old = set(old_sealed)
    out: dict[str, bytes | None] = {chunk_key(key, c): None for c in sorted(old - set(new_sealed))}
    for chunk, lo, hi in bounds[:-1]:
        if chunk not in old or chunk in touched or chunk == old_head:
            out[chunk_key(key, chunk)] = CHUNK_HEAD.pack(after.applied_offset) + after.rows[lo:hi].tobytes()
    out[key] = _head_value(after, head_rows, new_sealed)
    return out


def _appended_head(
    before_head: bytes, before: Window, after: Window, changed_days: Iterable[int], phase: int
) -> bytes | None:
    """The head value of `after` when it is `before` with rows appended after its newest, in its head's chunk,
    with sealed chunks before the head and the first of them still holding rows (the usual live day): the stored
    head's bytes with the new rows after them and a new header. None for anything else (`writes` lays it out).
    Rows the horizon passed are dropped from the first sealed chunk only, which is left as stored (reads drop
    them), so the head's rows are the stored ones."""
    changed = list(changed_days)
    sealed = HEAD.unpack_from(before_head)[2]
    if not changed or not sealed or not before.rows.size:
        return None
    held, days = before.rows["day"], after.rows["day"]
    newest = int(held[-1])
    new = len(changed)
    if (
        changed[0] <= newest
        or any(a >= b for a, b in zip(changed, changed[1:]))
        or len(days) <= new
        or int(days[-new - 1]) != newest  # every change is a row after the newest held (none a deletion)
        or chunk_of(changed[-1], phase) != chunk_of(newest, phase)
        or chunk_of(int(days[0]), phase) != chunk_of(int(held[0]), phase)
    ):
        return None
    return (
        HEAD.pack(after.applied_offset, after.horizon, sealed, after.stamp)
        + before_head[HEAD.size :]
        + after.rows[-new:].tobytes()
    )


def _head_only(before: Window, after: Window, touched: set[int], new_head: int | None, phase: int) -> bool:
    """True when the sealed chunks are those stored and none changed: the head's chunk is the same, the
    changes lie in it, and the first chunk is the same (a horizon that emptied a chunk moves it; a
    deletion that empties one in the middle touches it)."""
    if not before.rows.size or new_head is None or touched - {new_head}:
        return False
    days, new_days = before.days, after.days
    first = chunk_of(int(days[0]), phase)
    return chunk_of(int(days[-1]), phase) == new_head and first == chunk_of(int(new_days[0]), phase)


def written_at(key: bytes, value: bytes) -> int | None:
    """The source offset a stored window value (a head or a chunk) was written at; None for another key (a
    head block is merged on restore, never compared whole: `fresh_records`)."""
    parts = key.count(SEP.encode())
    if parts == 1 and len(value) >= HEAD.size:
        return int(HEAD.unpack_from(value)[0])
    if parts == 2 and len(value) >= CHUNK_HEAD.size:
        return int(CHUNK_HEAD.unpack_from(value)[0])
    return None


def is_block(key: bytes) -> bool:
    return key.startswith(LIVE_PREFIX.encode()) and key.count(SEP.encode()) == 3


def replaces(key: bytes, incoming: bytes | None, stored: bytes | None) -> bool:
    """Whether a changelog record read while restoring may replace the stored value of `key`: not when it
    was written at an older source offset than the stored one. Such a record comes from a worker that
    was frozen past its session timeout and woke up still writing its partitions' state after another
    worker had moved on; taking it would put the window back in time while the committed offsets are
    past what it misses (deletions always apply: a window missing a chunk is reported lost and loaded
    again from prices_daily). A head block is merged instead (`merge_blocks`)."""
    if incoming is None or stored is None:
        return True
    new, old = written_at(key, incoming), written_at(key, stored)
    return new is None or old is None or new >= old


def fresh_records(
    records: Iterable[tuple[int, bytes, bytes | None]], stored: Callable[[int, bytes], bytes | None]
) -> list[tuple[int, bytes | None]]:
    """Of changelog records `(partition, key, value)` read in order while restoring, those to apply: (index,
    the value to store), given the values stored so far (`stored(partition, key)`). A head block's value is
    merged with the block held (`merge_blocks`); any other record applies as it is, or not at all
    (`replaces`)."""
    latest: dict[tuple[int, bytes], bytes | None] = {}
    kept: list[tuple[int, bytes | None]] = []
    for k, (partition, key, value) in enumerate(records):
        where = (partition, key)
        before = latest[where] if where in latest else stored(partition, key)
        if value is not None and is_block(key):
            value = merge_blocks(before, value)
        elif not replaces(key, value, before):
            continue
        latest[where] = value
        kept.append((k, value))
    return kept


def value_bytes(values: Iterable[bytes | None]) -> int:
    """Bytes a set of writes puts into the changelog (values only; a deletion counts 0)."""
    return sum(len(v) for v in values if v)
