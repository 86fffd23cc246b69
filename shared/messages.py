"""Message schemas on the topics, and their one encode/decode point.

Prices topic: compact JSON (short keys; floats round-trip exactly through
`repr`) with a version field; `decode` raises BadMessage with a reason for
anything malformed, so the stream can dead-letter it instead of crashing or
dropping it. Embeddings topic: a binary batch (JSON header + raw float32
vectors), since vectors are most of the volume.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.errors import EmbedderError

VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
LIVE_RUN = "live"


EARLIEST_TRADE_DATE = date(1900, 1, 1)
FUTURE_DAYS_ALLOWED = 7


def _plain_id(value: str) -> str:
    """Instrument ids are stored verbatim (quotes, unicode, SQL text are fine), but control
    characters are not ids: they would also break the worker's keys."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("control characters in instrument_id")
    return value


def _plausible_date(value: date) -> date:
    latest = date.today() + timedelta(days=FUTURE_DAYS_ALLOWED)
    if not EARLIEST_TRADE_DATE <= value <= latest:
        raise ValueError(f"date {value} outside {EARLIEST_TRADE_DATE}..{latest}")
    return value


InstrumentId = Annotated[str, Field(min_length=1, max_length=50), AfterValidator(_plain_id)]
TradeDate = Annotated[date, AfterValidator(_plausible_date)]


class BadMessage(EmbedderError):
    """A message that cannot be processed; `reason` says why (it goes to the dead-letter topic)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Base(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, ser_json_inf_nan="constants")
    v: Literal[1] = VERSION
    run: str = Field(default=LIVE_RUN, min_length=1, max_length=64)


class PriceRow(_Base):
    """One prices_daily row (or its correction) for the stream."""

    kind: Literal["row"] = Field(default="row", alias="k")
    instrument_id: InstrumentId = Field(alias="i")
    trade_date: TradeDate = Field(alias="d")
    close: float = Field(alias="c")
    volume: float = Field(alias="vol")
    window_days: int | None = Field(default=None, alias="w", ge=1, le=2000)
    """The run's window, so the stream keeps enough history before the first tick."""


class Tick(_Base):
    """All rows of this run with trade_date <= as_of are published (sent to every partition)."""

    kind: Literal["tick"] = Field(default="tick", alias="k")
    as_of: TradeDate = Field(alias="d")
    window_days: int = Field(alias="w", ge=1, le=2000)
    models: tuple[str, ...] = Field(alias="m", min_length=1)
    rows_sent: tuple[int, ...] | None = Field(default=None, alias="n")
    """A replay's rows published so far to each partition (by partition number): the worker checks
    it received them all before computing the tick."""


class RowBatch(_Base):
    """Many rows of one source partition in one message (the replay's bulk form of PriceRow).

    Rows are `[instrument_id, trade_date, close, volume]`, in trade_date order;
    a replay sends its ticks after the batches that hold their rows.
    """

    kind: Literal["rows"] = Field(default="rows", alias="k")
    window_days: int = Field(alias="w", ge=1, le=2000)
    rows: list[tuple[InstrumentId, TradeDate, float, float]] = Field(alias="r")


class RunEnd(_Base):
    """A replay is complete (sent to every partition): the worker drops the run's state."""

    kind: Literal["end"] = Field(default="end", alias="k")


Message = Annotated[Union[PriceRow, RowBatch, Tick, RunEnd], Field(discriminator="kind")]
_adapter: TypeAdapter = TypeAdapter(Message)


def encode(message: BaseModel) -> bytes:
    """The wire form of a message."""
    return message.model_dump_json(by_alias=True).encode()


def row_problem(close: float, volume: float) -> str | None:
    """Why a price row cannot be used, or None when it can."""
    if not math.isfinite(close) or close <= 0:
        return "non-finite or non-positive close"
    if not math.isfinite(volume) or volume < 0:
        return "non-finite or negative volume"
    return None


# --- embeddings topic: one binary message per (tick, source partition) chunk ---------------------

EMBEDDING_MAGIC = b"EMB1"
_HEADER_LEN = struct.Struct("<I")
MAX_EMBEDDING_MESSAGE_BYTES = 512 * 1024


@dataclass(frozen=True)
class EmbeddingBatch:
    """Embeddings computed from one source partition, and optionally the completion of a tick.

    `items` are (instrument_id, as_of, model_id, vector bytes). When `done_as_of` is set, this is
    the last message of that tick for `partition`, and `done_count` embeddings were emitted for it:
    the sink records the completion in the same transaction as the rows.
    """

    run: str
    window_days: int
    partition: int
    items: list[tuple[str, date, str, bytes]]
    done_as_of: date | None = None
    done_count: int = 0
    rows_missing: int = 0


def encode_embeddings(batch: EmbeddingBatch) -> bytes:
    """MAGIC, header length, JSON header (run, window, partition, item keys, done), vectors."""
    header = {
        "run": batch.run, "w": batch.window_days, "p": batch.partition,
        "i": [[i, d.isoformat(), m, len(v)] for i, d, m, v in batch.items],
        "t": batch.done_as_of.isoformat() if batch.done_as_of else None, "n": batch.done_count,
        "x": batch.rows_missing,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([EMBEDDING_MAGIC, _HEADER_LEN.pack(len(head)), head, *(v for *_, v in batch.items)])


def decode_embeddings(raw: bytes | None) -> EmbeddingBatch:
    """Inverse of `encode_embeddings`; BadMessage for anything else."""
    if not raw or not raw.startswith(EMBEDDING_MAGIC):
        raise BadMessage("not an embedding batch")
    try:
        (size,) = _HEADER_LEN.unpack_from(raw, len(EMBEDDING_MAGIC))
        start = len(EMBEDDING_MAGIC) + _HEADER_LEN.size
        header = json.loads(raw[start:start + size])
        pos = start + size
        items = []
        for instrument_id, as_of, model_id, n in header["i"]:
            items.append((instrument_id, date.fromisoformat(as_of), model_id, raw[pos:pos + n]))
            pos += n
        if pos != len(raw):
            raise ValueError("length mismatch")
        done = date.fromisoformat(header["t"]) if header["t"] else None
        return EmbeddingBatch(header["run"], header["w"], header["p"], items, done, header["n"], header.get("x", 0))
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise BadMessage(f"corrupt embedding batch: {e}") from None


def chunk_embeddings(run: str, window_days: int, partition: int, items: list[tuple[str, date, str, bytes]],
                     done_as_of: date | None = None, rows_missing: int = 0) -> list[EmbeddingBatch]:
    """Split items into messages under MAX_EMBEDDING_MESSAGE_BYTES; the last carries the tick's done."""
    chunks: list[list] = [[]]
    size = 0
    for item in items:
        cost = len(item[3]) + len(item[0]) + len(item[2]) + 24
        if chunks[-1] and size + cost > MAX_EMBEDDING_MESSAGE_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += cost
    out = [EmbeddingBatch(run, window_days, partition, c) for c in chunks]
    if done_as_of is not None:
        last = out[-1]
        out[-1] = EmbeddingBatch(run, window_days, partition, last.items, done_as_of, len(items), rows_missing)
    elif not items:
        return []
    return out


def decode(raw: bytes | None) -> PriceRow | RowBatch | Tick | RunEnd:
    """Parse and validate; BadMessage(reason) for anything that cannot be processed."""
    if raw is None:
        raise BadMessage("empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"oversized message ({len(raw)} bytes > {MAX_MESSAGE_BYTES})")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadMessage("not JSON") from None
    if not isinstance(data, dict):
        raise BadMessage("not a JSON object")
    try:
        message = _adapter.validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadMessage(f"invalid field {where}: {first.get('msg')}") from None
    if isinstance(message, PriceRow):
        problem = row_problem(message.close, message.volume)
        if problem:
            raise BadMessage(problem)
    return message
