"""The stream's state, typed: per (run, instrument) a `Window`; per (run, partition) a `RunPartition`.

Two tables hold them (`windows`, `runs`), each value in one documented format.
Keys are `run \\x1f instrument_id` and `run \\x1f partition` (instrument ids never
hold control characters: `shared.contract.validation` refuses them).

Every value records the source offset it has applied, so after a crash or a
rebalance (the tables restored from their changelogs can be ahead of the
committed offsets) a re-delivered event is recognised and skipped.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from typing import Protocol

from shared.contract.encoder import LOOKBACK_FACTOR
from shared.contract.messages import LIVE_RUN

SEP = "\x1f"
LIVE_PREFIX = LIVE_RUN + SEP


def window_key(run: str, instrument_id: str) -> str:
    return f"{run}{SEP}{instrument_id}"


def run_key(run: str, partition: int) -> str:
    return f"{run}{SEP}{partition}"


@dataclass(frozen=True, order=True)
class TickRecord:
    """A processed tick date: what a later correction of a row in its look-back must recompute.

    `scope` is the market of a live tick (`*` for every market); None for a replay, whose
    instruments are the run's members."""

    day: int
    window_days: int
    models: tuple[str, ...]
    scope: str | None = None

    def reaches(self, trade_day: int) -> bool:
        """True when `trade_day` lies in this tick's look-back (trade_day <= T <= trade_day + 3N)."""
        return trade_day <= self.day <= trade_day + LOOKBACK_FACTOR * self.window_days


@functools.lru_cache(maxsize=64)
def members_json(members: frozenset[str]) -> bytes:
    """A run's members as JSON, sorted. Encoded once per set: the live run's members (every instrument of
    the partition) are written with its state at every event, and a set kept unchanged is the same object."""
    return json.dumps(sorted(members), separators=(",", ":")).encode()


@dataclass(frozen=True)
class RunPartition:
    """What one partition knows about one run.

    members: instruments whose rows came through this partition (a replay's tick emits for them);
    ticks: processed tick dates within the retention of the newest, ascending;
    tick_offset: source offset of the last tick applied;
    received / received_offset: rows of the run's batches that reached this partition, counted
    once per offset (a replay's tick says how many it sent).
    """

    members: frozenset[str] = frozenset()
    ticks: tuple[TickRecord, ...] = ()
    tick_offset: int = -1
    received: int = 0
    received_offset: int = -1

    @classmethod
    def parse(cls, value: bytes | None) -> RunPartition:
        if not value:
            return cls()
        data = json.loads(value)
        return cls(
            frozenset(data["members"]),
            tuple(TickRecord(d, w, tuple(m), s) for d, w, m, s in data["ticks"]),
            data["tick_offset"],
            data["received"],
            data["received_offset"],
        )

    def to_bytes(self) -> bytes:
        rest = json.dumps(
            {
                "ticks": [[t.day, t.window_days, list(t.models), t.scope] for t in self.ticks],
                "tick_offset": self.tick_offset,
                "received": self.received,
                "received_offset": self.received_offset,
            },
            separators=(",", ":"),
        )
        return b'{"members":' + members_json(self.members) + b"," + rest[1:].encode()

    def with_members(self, ids: set[str]) -> RunPartition:
        return self if ids <= self.members else replace(self, members=self.members | ids)

    def with_received(self, rows: int, offset: int) -> RunPartition:
        """Count a batch once, however often it is delivered."""
        if offset <= self.received_offset:
            return self
        return replace(self, received=self.received + rows, received_offset=offset)

    def with_ticks(self, records: list[TickRecord], keep_days: int, offset: int) -> RunPartition:
        """The processed ticks with `records` added (a repeat of a day and scope replaces it),
        those older than the newest minus `keep_days` dropped: no correction can reach them."""
        by_key = {(t.day, t.scope): t for t in self.ticks}
        by_key.update({(t.day, t.scope): t for t in records})
        newest = max(d for d, _ in by_key)
        kept = tuple(sorted(t for t in by_key.values() if t.day >= newest - keep_days))
        return replace(self, ticks=kept, tick_offset=max(offset, self.tick_offset))

    def ticks_reaching(self, trade_day: int) -> list[TickRecord]:
        """Processed ticks whose look-back contains `trade_day`."""
        return [t for t in self.ticks if t.reaches(trade_day)]


@dataclass
class Writes:
    """State changes of one event, applied by the adapter after the event's output is acknowledged."""

    windows: dict[str, bytes | None] = field(default_factory=dict)
    runs: dict[str, bytes | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.windows or self.runs)


class StateView(Protocol):
    """What the processor reads a state table through (a Faust table view in the worker, a dict in tests)."""

    def get(self, key: str, default: bytes | None = None, /) -> bytes | None: ...


class ByRun:
    """One view of two tables: keys of the live run in `live`, keys of replays in `replay`.

    Replay state has changelogs of its own, compacted eagerly (a finished replay tombstones its
    keys), so a worker starting on an empty state folder restores the live state, not every
    replay's history. The processor sees one mapping; keys say which run they belong to.

    With `raw_keys` the tables hold keys as UTF-8 bytes (faust's raw key serializer: no JSON encoding
    of every key a live day writes)."""

    def __init__(self, live, replay, raw_keys: bool = False):
        self.live = live
        self.replay = replay
        self.raw_keys = raw_keys

    def table(self, key: str):
        return self.live if key.startswith(LIVE_PREFIX) else self.replay

    def get(self, key: str, default=None):
        return self.table(key).get(key.encode() if self.raw_keys else key, default)

    def put(self, key: str, value: bytes | None) -> None:
        """Write (a value) or delete (None) through to the right table."""
        table = self.table(key)
        stored = key.encode() if self.raw_keys else key
        if value is None:
            table.pop(stored, None)
        else:
            table[stored] = value
