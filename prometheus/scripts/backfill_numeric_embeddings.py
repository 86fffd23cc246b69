"""`python -m prometheus.scripts.backfill_numeric_embeddings`: the platform's command, same flags as before.

It now runs this project's replay engine: through Kafka by default (starting a
worker for the run when none is consuming), `--direct` for the batch path. It
exits only once every embedding of the run is committed.
"""

from __future__ import annotations

import argparse
import sys

from backfill.selection import RunSelection
from embedder.exit_codes import run_with_exit_codes
from embedder.replay_command import run_replay
from shared.contract.config import load_settings
from shared.contract.models import DEFAULT_MODEL_ID
from shared.store.live_layout import resolve_if_reachable

PROG = "backfill_numeric_embeddings"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="Backfill numeric window embeddings for one as_of date.")
    p.add_argument("--as-of", required=True, help="as_of date (YYYY-MM-DD)")
    p.add_argument("--window-days", type=int, default=63)
    p.add_argument("--market-id", "--market", dest="market_id", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--instrument-id", dest="instrument_ids", action="append", default=None)
    p.add_argument(
        "--model-id", dest="model_ids", action="append", default=None, help=f"repeatable; default {DEFAULT_MODEL_ID}"
    )
    p.add_argument("--direct", action="store_true", help="compute from Postgres without Kafka")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        selection = RunSelection.build(
            window_days=args.window_days,
            model_ids=args.model_ids or [DEFAULT_MODEL_ID],
            as_of=args.as_of,
            market_id=args.market_id,
            instrument_ids=args.instrument_ids,
            limit=args.limit,
            offset=args.offset,
        )
        run_replay(
            load_settings() if args.direct else resolve_if_reachable(load_settings()), selection, direct=args.direct
        )

    return run_with_exit_codes(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
