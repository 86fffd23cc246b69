"""One partition's state as the processor sees it: windows and run states read through caches, written as
table writes (`Writes`) for the adapter to apply. The encoding of windows in the table (`window_store`:
chunked for the live run, whole for a replay's) and the parsed caches live here, under the stream logic,
as quix-streams' transaction cache sits under its state: the processor asks for a window and says what it
becomes, and never sees bytes.

Reads see this partition's own writes at once (the caches are updated when a write is made), before the
adapter has applied them; `forget()` drops the caches when effects were not applied or the partition
moved. A live window's head goes into its block (`window_store.block_of`); `flush` writes each block an
event changed once, after the event's chunks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from streams import window_store
from streams.state import LIVE_PREFIX, RunPartition, StateView, Writes, run_key
from streams.window import Window

DEFAULT_CACHE_WINDOWS = 50_000


class PartitionState:
    """Windows (per run and instrument) and run states (per run) of one partition, cached. Not thread-safe."""

    def __init__(self, partition: int, windows: StateView, runs: StateView, cache_windows: int = DEFAULT_CACHE_WINDOWS):
        self.partition = partition
        self.windows = windows
        self.runs = runs
        self.cache_windows = cache_windows
        self._windows: OrderedDict[str, Window] = OrderedDict()
        self._runs: dict[str, RunPartition] = {}
        self._blocks: dict[int, dict[str, bytes]] = {}
        """Live heads by block, as written (the table's blocks with this partition's writes since)."""
        self._changed_blocks: set[int] = set()

    def forget(self) -> None:
        """Drop the parsed caches (after a rebalance, or when effects were not applied)."""
        self._windows.clear()
        self._runs.clear()
        self._blocks.clear()
        self._changed_blocks.clear()

    @property
    def cached_windows(self) -> int:
        return len(self._windows)

    def window(self, key: str) -> Window:
        """The window stored under `key` (empty when none; `window_store.LOST` when a chunk is missing)."""
        window = self._windows.get(key)
        if window is None:
            if key.startswith(LIVE_PREFIX):
                window = window_store.parse_head(key, self._block(window_store.block_of(key)).get(key), self.windows)
            else:
                window = window_store.read(self.windows, key)
            self._cache(key, window)
        else:
            self._windows.move_to_end(key)
        return window

    def run(self, run: str) -> RunPartition:
        """What this partition knows about `run`."""
        state = self._runs.get(run)
        if state is None:
            state = self._runs[run] = RunPartition.parse(self.runs.get(run_key(run, self.partition)))
        return state

    def write_window(
        self, writes: Writes, key: str, before: Window, window: Window | None, changed_days: Sequence[int] = ()
    ) -> None:
        """Write `window` (None: delete it) in place of `before`, as stored: a live window's chunks that
        differ, a replay's window whole (`streams/window_store.py`)."""
        if not key.startswith(LIVE_PREFIX):
            writes.windows.update(window_store.writes(key, before, window, changed_days, chunked=False))
            self._cache(key, window)
            return
        number = window_store.block_of(key)
        block = self._block(number)
        written = window_store.writes(key, before, window, changed_days, before_head=block.get(key))
        head = written.pop(key)
        if head is None:
            block.pop(key, None)
        else:
            block[key] = head
        self._changed_blocks.add(number)
        writes.windows.update(written)
        self._cache(key, window)

    def flush(self, writes: Writes, offset: int) -> None:
        """Write the head blocks the event at `offset` changed (after its chunks: a head never lists a chunk
        written later)."""
        for block in sorted(self._changed_blocks):
            heads = self._blocks[block]
            writes.windows[window_store.block_key(self.partition, block)] = window_store.encode_block(offset, heads)
        self._changed_blocks.clear()

    def write_run(self, writes: Writes, run: str, before: RunPartition, after: RunPartition | None) -> None:
        """Write `after` (None: delete it) in place of `before`; nothing when unchanged."""
        if after is None:
            writes.runs[run_key(run, self.partition)] = None
            self._runs.pop(run, None)
        elif after != before:
            writes.runs[run_key(run, self.partition)] = after.to_bytes()
            self._runs[run] = after

    def _block(self, number: int) -> dict[str, bytes]:
        """The live heads of head block `number`."""
        heads = self._blocks.get(number)
        if heads is None:
            value = self.windows.get(window_store.block_key(self.partition, number))
            heads = self._blocks[number] = window_store.decode_block(value)[1]
        return heads

    def _cache(self, key: str, window: Window | None) -> None:
        if window is None:
            self._windows.pop(key, None)
            return
        self._windows[key] = window
        self._windows.move_to_end(key)
        while len(self._windows) > self.cache_windows:
            self._windows.popitem(last=False)
