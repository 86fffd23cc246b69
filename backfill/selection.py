"""What a replay covers: instruments, as_of dates, window and models (SPEC section 5).

Arguments are checked before any connection is made, so a bad command writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import psycopg

from shared.contract.errors import BadArguments
from shared.contract.models import ModelSpec, validate_models
from shared.store.instruments import market_cut, trade_dates_between


def parse_date(text: str, flag: str) -> date:
    """An ISO date, or BadArguments naming the flag."""
    try:
        return date.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise BadArguments(f"{flag}: not a date (YYYY-MM-DD): {text!r}") from None


@dataclass(frozen=True)
class RunSelection:
    """A validated selection; exactly one of (as_of) or (date_from, date_to) is set."""

    window_days: int
    models: tuple[ModelSpec, ...]
    as_of: date | None = None
    date_from: date | None = None
    date_to: date | None = None
    market_id: str | None = None
    instrument_ids: tuple[str, ...] = ()
    limit: int | None = None
    offset: int = 0

    @classmethod
    def build(
        cls,
        *,
        window_days: int,
        model_ids: list[str],
        as_of: str | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
        market_id: str | None = None,
        instrument_ids: list[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> RunSelection:
        """Validate raw command-line values; BadArguments says what is wrong in one line."""
        models = tuple(validate_models(model_ids))
        if not models:
            raise BadArguments("at least one --model-id is required")
        if window_days < 1:
            raise BadArguments(f"--window-days must be at least 1, got {window_days}")
        if limit is not None and limit < 0:
            raise BadArguments(f"--limit must not be negative, got {limit}")
        if offset < 0:
            raise BadArguments(f"--offset must not be negative, got {offset}")
        ids = tuple(dict.fromkeys(instrument_ids or ()))
        if not ids and not market_id:
            raise BadArguments("nothing selected: give --market-id or at least one --instrument-id")
        if ids and (limit is not None or offset):
            raise BadArguments("--limit/--offset cut a market; they do not apply to --instrument-id")
        if as_of is not None:
            if date_from is not None or date_to is not None:
                raise BadArguments("give either --as-of or --from/--to, not both")
            return cls(
                window_days,
                models,
                as_of=parse_date(as_of, "--as-of"),
                market_id=market_id,
                instrument_ids=ids,
                limit=limit,
                offset=offset,
            )
        if date_from is None or date_to is None:
            raise BadArguments("give --as-of, or both --from and --to")
        start, end = parse_date(date_from, "--from"), parse_date(date_to, "--to")
        if start > end:
            raise BadArguments(f"--from {start} is after --to {end}")
        return cls(
            window_days,
            models,
            date_from=start,
            date_to=end,
            market_id=market_id,
            instrument_ids=ids,
            limit=limit,
            offset=offset,
        )

    def describe(self) -> str:
        """One line naming the selection (for logs and the causes of the versions a run supersedes)."""
        when = str(self.as_of) if self.as_of else f"{self.date_from}..{self.date_to}"
        if self.instrument_ids:
            what = ", ".join(self.instrument_ids[:3]) + (
                f" and {len(self.instrument_ids) - 3} more" if len(self.instrument_ids) > 3 else ""
            )
        else:
            what = (
                f"market {self.market_id}"
                + (f" limit {self.limit}" if self.limit is not None else "")
                + (f" offset {self.offset}" if self.offset else "")
            )
        return f"{when} {what} window {self.window_days} {', '.join(self.model_ids)}"

    @property
    def model_ids(self) -> list[str]:
        return [m.model_id for m in self.models]

    def instruments(self, conn: psycopg.Connection) -> list[str]:
        """The run's instrument ids: the given ones verbatim, or the market's cut (SPEC section 2)."""
        if self.instrument_ids:
            return list(self.instrument_ids)
        assert self.market_id is not None  # build() requires ids or a market
        return market_cut(conn, self.market_id, self.limit, self.offset)

    def as_of_dates(self, conn: psycopg.Connection, instrument_ids: list[str]) -> list[date]:
        """`--as-of D` gives [D]; a range gives the distinct trade dates of the selection in it."""
        if self.as_of is not None:
            return [self.as_of]
        assert self.date_from is not None and self.date_to is not None  # build() requires a range then
        return trade_dates_between(conn, instrument_ids, self.date_from, self.date_to)
