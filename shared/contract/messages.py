"""Message schemas on the prices topic, and their one encode/decode point.

Compact JSON with a version field. `decode` raises BadMessage with a reason for
a message that cannot be processed at all, so the stream can dead-letter it
instead of crashing or dropping it. A row batch is checked row by row with
`shared.contract.validation.row_problem` (the rule `prices import` applies too): its bad
rows come back in `RowBatch.rejected` and cost only themselves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property, partial
from typing import Annotated, Any, Literal, NamedTuple, Union, cast

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from shared.contract.errors import EmbedderError
from shared.contract.validation import (
    date_problem,
    id_problem,
    latest_trade_date,
    row_problem,
    values_problem,
)

VERSION: Literal[1] = 1
MAX_MESSAGE_BYTES = 64 * 1024
ROW_BATCH_BYTES = 60 * 1024
"""Most bytes a row batch is cut at: under MAX_MESSAGE_BYTES whatever the ids (up to 50 characters)."""
LIVE_RUN = "live"
ALL_MARKETS = "*"


class Row(NamedTuple):
    """A price row as the stream sees it."""

    instrument_id: str
    trade_date: date
    close: float
    volume: float


class Deletion(NamedTuple):
    """The key of a prices_daily row that was deleted."""

    instrument_id: str
    trade_date: date


def is_deletion(row: tuple) -> bool:
    """A deleted key rather than a row with values (plain tuples of either shape count too: rows read
    from the database and written in tests are tuples)."""
    return len(row) == 2


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
    """One prices_daily row (or its correction) for the stream; checked by the shared row rule."""

    kind: Literal["row"] = Field(default="row", alias="k")
    instrument_id: str = Field(alias="i")
    trade_date: date = Field(alias="d")
    close: float = Field(alias="c")
    volume: float = Field(alias="vol")
    window_days: int | None = Field(default=None, alias="w", ge=1, le=2000)
    """The run's window, so the stream keeps enough history before the first tick."""


class Tick(_Base):
    """All rows of this run with trade_date <= as_of are published (sent to every partition).

    A replay's block carries all of its as_of dates in one tick (`ds`); `d` is the newest.
    A live tick may be scoped to one market (`mk`); without it, it covers every market.
    """

    kind: Literal["tick"] = Field(default="tick", alias="k")
    as_of: date = Field(alias="d")
    more_dates: tuple[date, ...] | None = Field(default=None, alias="ds")
    window_days: int = Field(alias="w", ge=1, le=2000)
    models: tuple[str, ...] = Field(alias="m", min_length=1)
    rows_sent: tuple[int, ...] | None = Field(default=None, alias="n")
    """A replay's rows published so far to each partition (by partition number): the worker checks
    it received them all before computing the tick."""
    market_id: str | None = Field(default=None, alias="mk", min_length=1, max_length=50)
    source_id: int | None = Field(default=None, alias="o")
    """Where the tick came from (the outbox id of a live tick): one tick, one identity."""
    query_run: str | None = Field(default=None, alias="q", min_length=1, max_length=64)
    """A query of the live windows (`embedder replay` of dates they cover): compute the selection
    from the live state, record the output under this run id, and leave the live tick log alone."""
    limit: int | None = Field(default=None, alias="lim", ge=0)
    offset: int = Field(default=0, alias="off", ge=0)
    instrument_ids: tuple[str, ...] | None = Field(default=None, alias="ids")
    """A query's selection: the market's instruments cut by offset/limit, or these ids."""
    stamp: int | None = Field(default=None, alias="f", ge=0)
    """The claim of what the tick computes (`shared.store.write_claims`): every message before it in each
    partition has been applied. None from a release before claims."""
    lookback_from_db: bool | None = Field(default=None, alias="db")
    """A query older than the live windows keep (`instrument_ids` required): each partition reads its
    instruments' look-back from prices_daily (the batch path's reader) instead of the windows. Absent
    unless true, so workers that predate it reject such a tick rather than misread it."""

    @model_validator(mode="after")
    def _lookback_names_instruments(self) -> Tick:
        if self.lookback_from_db and (self.query_run is None or self.instrument_ids is None):
            raise ValueError("a tick reading its look-back from the database is a query naming its instruments")
        return self

    @cached_property
    def dates(self) -> tuple[date, ...]:
        """Every as_of date of the tick, ascending (read per embedding by the processor: sorted once)."""
        return tuple(sorted({self.as_of, *(self.more_dates or ())}))

    @property
    def scope(self) -> str:
        """The market the tick covers (`*` for all)."""
        return self.market_id or ALL_MARKETS


class RunEnd(_Base):
    """A replay is complete (sent to every partition): the worker drops the run's state."""

    kind: Literal["end"] = Field(default="end", alias="k")


_Small = Annotated[Union[PriceRow, Tick, RunEnd], Field(discriminator="kind")]
_adapter: TypeAdapter = TypeAdapter(_Small)


@dataclass(frozen=True)
class RowBatch:
    """Many rows of one partition's instruments in one message (live capture and replays).

    `rows` are the valid rows in order: `(id, date, close, volume)` for a row, `(id, date)`
    for a deleted one. `rejected` holds (reason, raw row) of rows that failed the row rule;
    each is dead-lettered alone, the rest are applied.
    """

    run: str
    window_days: int
    rows: list[Row | Deletion]
    rejected: list[tuple[str, Any]] = field(default_factory=list)
    slack_days: int | None = None
    """Days the run's windows keep beyond one look-back (a replay's block length); None: the
    worker's `retention_slack_days`."""
    stamp: int | None = None
    """Where these rows were read (`shared.store.write_claims`): a window never takes rows older than it holds,
    and corrections they cause claim it. None from a release before claims."""
    wire: list[bytes] | None = field(default=None, compare=False, repr=False)
    """The rows already encoded (`row_wire`), when the sender has them: encoded once, not twice."""
    kind: str = "rows"

    @property
    def rows_total(self) -> int:
        """Rows the message carried, valid or not (what a replay counts as sent)."""
        return len(self.rows) + len(self.rejected)


Message = Union[PriceRow, RowBatch, Tick, RunEnd]


def encode(message: BaseModel | RowBatch) -> bytes:
    """The wire form of a message."""
    if isinstance(message, RowBatch):
        rows = message.wire if message.wire is not None else map(row_wire, message.rows)
        head = _row_batch_head(message.run, message.window_days, message.slack_days, message.stamp)
        return head + b",".join(rows) + b"]}"
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


def _row_batch_head(run: str, window_days: int, slack_days: int | None = None, stamp: int | None = None) -> bytes:
    slack = b"" if slack_days is None else b',"s":' + str(slack_days).encode()
    if stamp is not None:
        slack += b',"f":' + str(stamp).encode()
    return (
        b'{"v":1,"run":'
        + json.dumps(run).encode()
        + b',"k":"rows","w":'
        + str(window_days).encode()
        + slack
        + b',"r":['
    )


def row_wire(row: Sequence) -> bytes:
    """One row as it appears in a row batch (a size-cutter keeps it, to send it without encoding again)."""
    instrument_id, trade_date, *values = row
    fields = [instrument_id, trade_date.isoformat(), *values]
    if all(type(v) in (float, int) and math.isfinite(v) for v in values):
        try:  # 3.7x faster (1.3 s of a whole-data-set replay's 4.4 CPU-s); the same JSON values
            return orjson.dumps(fields)
        except orjson.JSONEncodeError:  # an integer beyond 64 bits
            pass
    return json.dumps(fields, separators=(",", ":")).encode()  # NaN, infinities: as the json module writes them


def rows_wire(rows: Sequence[Sequence]) -> bytes:
    """Rows as they appear together in a row batch: the JSON values of `b",".join(map(row_wire, rows))`, the
    same bytes for the usual rows, in one orjson call (a replay's command spent 0.8 of its 2.6 CPU-s encoding
    its rows one at a time)."""
    try:
        joined = orjson.dumps(rows)[1:-1]
    except TypeError:  # a value orjson does not write (an integer beyond 64 bits): row by row
        joined = b"null"
    if b"null" in joined:  # NaN and infinities come out as null (or an id holds the word): row by row
        return b",".join(map(row_wire, rows))
    return joined


MAX_STAMP = 2**63 - 1


def row_batch_overhead(
    run: str = "r" * 64, window_days: int = 2000, slack_days: int | None = 3650, stamp: int | None = MAX_STAMP
) -> int:
    """Encoded bytes of a row batch around its rows (by default for the longest run id and fields)."""
    return len(_row_batch_head(run, window_days, slack_days, stamp)) + 2


def row_batches(
    run: str, window_days: int, rows: Iterable[Row | Deletion], max_bytes: int = ROW_BATCH_BYTES
) -> Iterator[RowBatch]:  # (live capture: no slack field)
    """`rows` cut into RowBatch messages of at most `max_bytes` encoded bytes, order kept.

    Cut by the encoded size, not a row count, so any id length (up to the schema's 50
    characters, which JSON may escape to 300 bytes) stays under the message limit."""
    head = row_batch_overhead(run, window_days, None)  # with room for a stamp the relay sets
    batch: list = []
    wire: list[bytes] = []
    size = head
    for row in rows:
        encoded = row_wire(row)
        if batch and size + len(encoded) + 1 > max_bytes:
            yield RowBatch(run, window_days, batch, wire=wire)
            batch, wire, size = [], [], head
        batch.append(tuple(row))
        wire.append(encoded)
        size += len(encoded) + 1
    if batch:
        yield RowBatch(run, window_days, batch, wire=wire)


UNCHECKED = "not checked yet"
ROW_SHAPE = "a row is [instrument_id, trade_date, close, volume] or [instrument_id, trade_date]"


class _RowChecks:
    """The row rule for one batch's rows, each id and date text checked once: a replay's batch carries each of
    its instruments and days tens of times (a quarter of the CPU of decoding one went to checking them again)."""

    def __init__(self, latest: date):
        self.latest = latest
        self.ids: dict[str, str | None] = {}
        self.days: dict[str, tuple[date | None, str | None]] = {}

    def id_problem(self, instrument_id: Any) -> str | None:
        if not isinstance(instrument_id, str):
            return id_problem(instrument_id)
        try:
            return self.ids[instrument_id]
        except KeyError:
            problem = self.ids[instrument_id] = id_problem(instrument_id)
            return problem

    def day(self, text: Any) -> tuple[date | None, str | None]:
        """(the date, why it cannot be a trading day or None)."""
        if not isinstance(text, str):
            return None, date_problem(None, self.latest)
        try:
            return self.days[text]
        except KeyError:
            try:
                trade_date: date | None = date.fromisoformat(text)
            except ValueError:
                trade_date = None
            checked = self.days[text] = (trade_date, date_problem(trade_date, self.latest))
            return checked

    def parse_all(self, rows: list) -> tuple[list[Row | Deletion], list[tuple[str, Any]]]:
        """(the valid rows, (reason, raw row) of each refused one), in order. A row like one seen before (an id
        and a date text checked already, finite float values in range) is taken at once; any other goes through
        `parse`, which checks and remembers its id and date."""
        valid: list[Row | Deletion] = []
        rejected: list[tuple[str, Any]] = []
        ids, days = self.ids, self.days
        new_row = partial(tuple.__new__, Row)  # in C: Row's own constructor is a Python function (0.26 -> 0.20 us)
        for raw in rows:
            if type(raw) is list and len(raw) == 4:
                instrument_id, text, close, volume = raw
                day = days.get(text) if type(text) is str else None
                if (
                    day is not None
                    and day[1] is None
                    and type(instrument_id) is str
                    and ids.get(instrument_id, UNCHECKED) is None
                    and type(close) is float
                    and type(volume) is float
                    and 0 < close < math.inf
                    and 0 <= volume < math.inf
                ):
                    valid.append(new_row((instrument_id, day[0], close, volume)))
                    continue
            problem, row = self.parse(raw)
            if problem:
                rejected.append((problem, raw))
            else:
                valid.append(cast(Row | Deletion, row))
        return valid, rejected

    def parse(self, raw: Any) -> tuple[str | None, Row | Deletion | None]:
        """(reason, None) for a row the shared rule refuses, else (None, row); the rule's order of reasons
        (`row_problem`, `key_problem`)."""
        if not isinstance(raw, list) or len(raw) not in (2, 4):
            return ROW_SHAPE, None
        instrument_id = raw[0]
        trade_date, day_problem = self.day(raw[1])
        problem = self.id_problem(instrument_id) or day_problem
        if len(raw) == 2:
            return (problem, None) if problem else (None, Deletion(instrument_id, cast(date, trade_date)))
        close, volume = raw[2], raw[3]
        problem = problem or values_problem(close, volume)
        if problem:
            return problem, None
        return None, Row(instrument_id, cast(date, trade_date), float(close), float(volume))


ROW_BATCH_FIELDS = {"v", "run", "k", "w", "r", "s", "f"}


def _decode_row_batch(data: dict) -> RowBatch:
    if set(data) - ROW_BATCH_FIELDS:
        raise BadMessage(f"invalid field rows: unexpected {sorted(set(data) - ROW_BATCH_FIELDS)}")
    run, window_days, rows, slack = data.get("run", LIVE_RUN), data.get("w"), data.get("r"), data.get("s")
    stamp = data.get("f")
    if data.get("v", VERSION) != VERSION:
        raise BadMessage(f"invalid field rows.v: unsupported version {data.get('v')!r}")
    if not isinstance(run, str) or not 1 <= len(run) <= 64:
        raise BadMessage("invalid field rows.run: a run id of 1 to 64 characters")
    if isinstance(window_days, bool) or not isinstance(window_days, int) or not 1 <= window_days <= 2000:
        raise BadMessage("invalid field rows.w: window days between 1 and 2000")
    if not isinstance(rows, list):
        raise BadMessage("invalid field rows.r: a list of rows")
    if slack is not None and (isinstance(slack, bool) or not isinstance(slack, int) or not 0 <= slack <= 3650):
        raise BadMessage("invalid field rows.s: slack days between 0 and 3650")
    if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, int) or not 0 <= stamp <= MAX_STAMP):
        raise BadMessage("invalid field rows.f: a stamp between 0 and 2**63-1")
    valid, rejected = _RowChecks(latest_trade_date()).parse_all(rows)
    return RowBatch(run, window_days, valid, rejected, slack, stamp)


def loads(raw: bytes) -> Any:
    """JSON as the json module reads it, 4-5x faster for the usual message (orjson; it was 8 % of the
    worker's CPU in a stream replay). What orjson refuses and the json module accepts (NaN, lone
    surrogates, integers beyond 64 bits) is read by the json module, so such a row still costs only itself."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def decode(raw: bytes | None) -> Message:
    """Parse and validate; BadMessage(reason) for anything that cannot be processed."""
    if raw is None:
        raise BadMessage("empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"oversized message ({len(raw)} bytes > {MAX_MESSAGE_BYTES})")
    try:
        data = loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadMessage("not JSON") from None
    if not isinstance(data, dict):
        raise BadMessage("not a JSON object")
    if data.get("k") == "rows":
        return _decode_row_batch(data)
    try:
        message = _adapter.validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadMessage(f"invalid field {where}: {first.get('msg')}") from None
    if isinstance(message, PriceRow):
        problem = row_problem(message.instrument_id, message.trade_date, message.close, message.volume)
        if problem:
            raise BadMessage(problem)
    if isinstance(message, Tick):
        problem = next(filter(None, (date_problem(d) for d in message.dates)), None)
        problem = (
            problem
            or (message.market_id and id_problem(message.market_id))
            or next(filter(None, map(id_problem, message.instrument_ids or ())), None)
        )
        if problem:
            raise BadMessage(f"invalid tick: {problem}")
    return message


def row_payload(run: str, row: Any) -> bytes:
    """One row as its own dead-letter payload (a rejected raw row, or a parsed one)."""
    if isinstance(row, tuple) and len(row) in (2, 4) and isinstance(row[1], date):
        row = [row[0], row[1].isoformat(), *row[2:]]
    return json.dumps({"run": run, "row": row}, default=str).encode()


def dead_letter_record(reason: str, topic: str, partition: int | None, offset: int | None, payload: bytes) -> bytes:
    """A dead-letter record: why, where it came from (a topic's partition and offset, or
    `prices_outbox` and the entry id), and the first 4 KiB of the payload (for one bad row of a
    batch, that row alone)."""
    return json.dumps(
        {
            "reason": reason,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "payload": payload[:4096].decode("utf-8", "replace"),
        }
    ).encode()
