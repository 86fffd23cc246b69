"""The selection flags every command that selects instruments and dates takes, declared once.

`replay`, `verify` and `embeddings export` name the same things the same way (SPEC section 2's selection:
a market's ACTIVE EQUITY instruments or ids, one as_of or a range, a cut of the market); the values are
validated where the selection is built (`backfill.selection`, `backfill.verify`, `shared.store.embedding_reads`),
so every command says a wrong value in the same words.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

AsOf = Annotated[Optional[str], typer.Option("--as-of", metavar="DATE", help="One as_of date (YYYY-MM-DD).")]
DateFrom = Annotated[Optional[str], typer.Option("--from", metavar="DATE", help="First as_of date of a range.")]
DateTo = Annotated[Optional[str], typer.Option("--to", metavar="DATE", help="Last as_of date of a range.")]
MarketId = Annotated[
    Optional[str], typer.Option("--market-id", metavar="MARKET", help="The market's ACTIVE EQUITY instruments.")
]
InstrumentIds = Annotated[
    Optional[list[str]], typer.Option("--instrument-id", metavar="ID", help="An instrument (repeatable).")
]
Limit = Annotated[
    Optional[int], typer.Option("--limit", metavar="N", help="At most N of the market's instruments (by id).")
]
Offset = Annotated[int, typer.Option("--offset", metavar="N", help="Skip the market's first N instruments.")]
