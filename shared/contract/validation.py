"""The one rule for a usable price row: `prices import`, the live relay and the worker all apply it.

A row is (instrument_id, trade_date, close, volume). The rule is deliberately
about the row alone (no database): unknown instruments are a fact of the
`instruments` table and are checked where that table is at hand.

A *future* trade_date is one after tomorrow in UTC (`today + FUTURE_DAYS_ALLOWED`):
no market anywhere has closed a day later than that, so such a row is a typo
(2071 for 2017) or a clock error. Applied to the live windows it would move
their horizon decades ahead and drop every real row, so it is refused at import
and dead-lettered on the wire, with the same reason.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta

MAX_ID_LENGTH = 50  # instruments.instrument_id varchar(50)
EARLIEST_TRADE_DATE = date(1900, 1, 1)
FUTURE_DAYS_ALLOWED = 1

MISSING_ID = "missing instrument_id"
LONG_ID = f"instrument_id longer than {MAX_ID_LENGTH} characters"
CONTROL_CHARACTERS = "control characters in instrument_id"
NOT_A_DATE = "trade_date is not a date"
ANCIENT_DATE = f"trade_date before {EARLIEST_TRADE_DATE}"
FUTURE_DATE = f"trade_date in the future (after today + {FUTURE_DAYS_ALLOWED} day, UTC)"
NOT_A_NUMBER = "close or volume is not a number"
NON_FINITE_CLOSE = "non-finite close"
NON_POSITIVE_CLOSE = "non-positive close"
NON_FINITE_VOLUME = "non-finite volume"
NEGATIVE_VOLUME = "negative volume"
_CONTROL = re.compile("[\x00-\x1f\x7f]")
"""A control character: one search in C (the relay checks every captured row's id)."""


def latest_trade_date(today: date | None = None) -> date:
    """The newest trade_date the rule accepts."""
    return (today or datetime.now(UTC).date()) + timedelta(days=FUTURE_DAYS_ALLOWED)


def id_problem(instrument_id: object) -> str | None:
    """Why `instrument_id` is not an id, or None. Quotes, unicode and SQL text are fine (stored
    verbatim); control characters are not (they would also break the worker's state keys)."""
    if not isinstance(instrument_id, str) or not instrument_id:
        return MISSING_ID
    if len(instrument_id) > MAX_ID_LENGTH:
        return LONG_ID
    if _CONTROL.search(instrument_id):
        return CONTROL_CHARACTERS
    return None


def date_problem(trade_date: object, latest: date | None = None) -> str | None:
    """Why `trade_date` cannot be a trading day, or None."""
    if not isinstance(trade_date, date):
        return NOT_A_DATE
    if trade_date < EARLIEST_TRADE_DATE:
        return ANCIENT_DATE
    if trade_date > (latest or latest_trade_date()):
        return FUTURE_DATE
    return None


def values_problem(close: object, volume: object) -> str | None:
    """Why (close, volume) cannot be used, or None."""
    if (
        isinstance(close, bool)
        or isinstance(volume, bool)
        or not isinstance(close, (int, float))
        or not isinstance(volume, (int, float))
    ):
        return NOT_A_NUMBER
    if not math.isfinite(close):
        return NON_FINITE_CLOSE
    if close <= 0:
        return NON_POSITIVE_CLOSE
    if not math.isfinite(volume):
        return NON_FINITE_VOLUME
    if volume < 0:
        return NEGATIVE_VOLUME
    return None


def row_problem(
    instrument_id: object, trade_date: object, close: object, volume: object, latest: date | None = None
) -> str | None:
    """Why a price row cannot be used, or None when it can. `latest` pins the newest accepted
    date (callers checking many rows compute it once)."""
    return id_problem(instrument_id) or date_problem(trade_date, latest) or values_problem(close, volume)


def key_problem(instrument_id: object, trade_date: object, latest: date | None = None) -> str | None:
    """`row_problem` for a deleted row: only its key must be valid."""
    return id_problem(instrument_id) or date_problem(trade_date, latest)
