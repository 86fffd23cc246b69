"""Fakes of what `streams.adapter.PricesAdapter` writes to — state tables, the sink, the dead-letter topic —
and of faust's events, each logging what it did, so tests see the commit order and can fail any step."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from shared.contract.messages import encode
from streams.registry import StaticRegistry


class Table(dict):
    """A state table over a dict; `fail` makes the next put raise (a RocksDB or changelog error)."""

    def __init__(self, log: list[str]):
        super().__init__()
        self.log, self.fail = log, False

    def put(self, key: str, value: bytes | None) -> None:
        if self.fail:
            raise OSError("state write failed")
        self.log.append("state")
        if value is None:
            self.pop(key, None)
        else:
            self[key] = value


class Sink:
    """Commits at once, or raises (`fail`), or holds a write until `release` is set; with `hold`, output is
    taken and never committed (the process dies before the commit: nothing is acked)."""

    def __init__(self, log: list[str]):
        self.log, self.fail, self.release, self.hold = log, False, None, False
        self.committed: list = []

    async def submit(self, batches, done) -> None:
        if self.fail:
            raise OSError("sink failed")
        if self.hold:
            return
        self.log.append("sink")
        self.committed.extend(batches)
        asyncio.get_running_loop().call_soon(done)  # as BatchingSink: on the loop, after its commit

    async def write(self, batches) -> None:
        if self.release is not None:
            await self.release.wait()
        if self.fail:
            raise OSError("sink failed")
        self.log.append("sink")
        self.committed.extend(batches)


class DeadLetters:
    """Sends at once; `fail_send` raises on send, `fail_ack` makes Kafka's acknowledgement fail."""

    def __init__(self, log: list[str]):
        self.log, self.fail_send, self.fail_ack = log, False, False
        self.sent: list[bytes] = []

    async def send(self, *, key, value):
        if self.fail_send:
            raise OSError("broker away")
        self.log.append("dead letter")
        self.sent.append(value)
        acked = asyncio.get_running_loop().create_future()
        if self.fail_ack:
            acked.set_exception(OSError("not acknowledged"))
        else:
            self.log.append("dead letter acknowledged")
            acked.set_result(None)
        return acked


class Registry(StaticRegistry):
    def learn(self, ids) -> None:
        pass

    def refresh(self, token=None) -> None:
        pass


class Event:
    def __init__(self, partition: int, offset: int, message, log: list[str]):
        self.message = SimpleNamespace(partition=partition, offset=offset, topic="prices")
        self.key, self.value = b"k", encode(message) if not isinstance(message, bytes) else message
        self.log, self.acked = log, False

    def ack(self) -> None:
        self.log.append("ack")
        self.acked = True


class World:
    """A worker's stream logic over fake tables, sink and dead-letter topic: the processor and the commit order
    of `streams.adapter.PricesAdapter`, exactly as the worker drives them, one partition, a window of
    `window_days`, instruments `ids` of one market. `feed` delivers a message as faust would."""

    def __init__(self, ids: list[str], window_days: int, windows: Table | None = None, runs: Table | None = None):
        from prometheus_client import CollectorRegistry

        from shared.metrics import StreamMetrics
        from streams.adapter import PricesAdapter
        from streams.processor import ProcessorConfig
        from streams.registry import InstrumentInfo

        self.log: list[str] = []
        self.windows = windows if windows is not None else Table(self.log)
        self.runs = runs if runs is not None else Table(self.log)
        self.windows.log = self.runs.log = self.log
        self.sink, self.dead = Sink(self.log), DeadLetters(self.log)
        self.metrics = StreamMetrics.create(CollectorRegistry())
        registry = Registry({i: InstrumentInfo("M1", True) for i in ids}, 1)
        self.adapter = PricesAdapter(
            ProcessorConfig(1, window_days, 15),
            self.windows,
            self.runs,
            registry,
            None,
            self.sink,
            self.dead,
            self.metrics,
        )

    def feed(self, offset: int, message) -> Event:
        event = Event(0, offset, message, self.log)

        async def deliver() -> None:
            await self.adapter.on_event(event)
            await asyncio.sleep(0)  # the sink's done callbacks

        asyncio.run(deliver())
        return event
