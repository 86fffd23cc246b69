"""Message schemas on the topics, and their one encode/decode point.

Compact JSON (short keys; floats round-trip exactly through `repr`), with a
version field. `decode` raises BadMessage with a reason for anything malformed,
so the stream can dead-letter it instead of crashing or dropping it.
"""
from __future__ import annotations

import base64
import json
import math
from datetime import date
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.errors import EmbedderError

VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
LIVE_RUN = "live"


class BadMessage(EmbedderError):
    """A message that cannot be processed; `reason` says why (it goes to the dead-letter topic)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Base(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    v: Literal[1] = VERSION
    run: str = Field(default=LIVE_RUN, min_length=1, max_length=64)


class PriceRow(_Base):
    """One prices_daily row (or its correction) for the stream."""

    kind: Literal["row"] = Field(default="row", alias="k")
    instrument_id: str = Field(alias="i", min_length=1, max_length=50)
    trade_date: date = Field(alias="d")
    close: float = Field(alias="c")
    volume: float = Field(alias="vol")
    window_days: int | None = Field(default=None, alias="w", ge=1, le=2000)
    """The run's window, so the stream keeps enough history before the first tick."""


class Tick(_Base):
    """All rows of this run with trade_date <= as_of are published (sent to every partition)."""

    kind: Literal["tick"] = Field(default="tick", alias="k")
    as_of: date = Field(alias="d")
    window_days: int = Field(alias="w", ge=1, le=2000)
    models: tuple[str, ...] = Field(alias="m", min_length=1)


class Embedding(_Base):
    """One computed embedding on its way to the sink."""

    kind: Literal["emb"] = Field(default="emb", alias="k")
    instrument_id: str = Field(alias="i")
    as_of: date = Field(alias="d")
    model_id: str = Field(alias="m")
    window_days: int = Field(alias="w")
    vector_b64: str = Field(alias="x")

    @property
    def vector(self) -> bytes:
        return base64.b64decode(self.vector_b64)


class TickDone(_Base):
    """After a tick's embeddings of one source partition: lets the sink record completion."""

    kind: Literal["done"] = Field(default="done", alias="k")
    partition: int = Field(alias="p")
    as_of: date = Field(alias="d")
    emitted: int = Field(alias="n")


Message = Annotated[Union[PriceRow, Tick, Embedding, TickDone], Field(discriminator="kind")]
_adapter: TypeAdapter = TypeAdapter(Message)


def encode(message: BaseModel) -> bytes:
    """The wire form of a message."""
    return message.model_dump_json(by_alias=True).encode()


def embedding_message(run: str, instrument_id: str, as_of: date, model_id: str, window_days: int, vector: bytes) -> Embedding:
    return Embedding(run=run, i=instrument_id, d=as_of, m=model_id, w=window_days, x=base64.b64encode(vector).decode())


def decode(raw: bytes | None) -> PriceRow | Tick | Embedding | TickDone:
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
        if not math.isfinite(message.close) or message.close <= 0:
            raise BadMessage("non-finite or non-positive close")
        if not math.isfinite(message.volume) or message.volume < 0:
            raise BadMessage("non-finite or negative volume")
    return message
