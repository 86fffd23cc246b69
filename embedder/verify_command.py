"""`embedder verify`: the table against SPEC section 3 over prices_daily, with progress and a report."""

from __future__ import annotations

import json
import time

from backfill.verify import KINDS, VerifyReport, VerifySelection, verify
from embedder.console import CountedProgress, err, out
from shared.contract.config import Settings
from shared.store.db import connection

DIFFERENCES = 3
"""Exit code when the selection differs from the reference (and was not, or not all, repaired)."""


def run_verify(settings: Settings, selection: VerifySelection, repair: bool, as_json: bool) -> int:
    """Verify (and with `repair`, rewrite what differs); print the report; return the exit code."""
    started = time.perf_counter()
    shown = CountedProgress("verify", "keys checked")
    try:
        with connection(settings.database_url) as conn:
            report = verify(conn, selection, repair, lambda instruments: shown.start(instruments), shown.advance)
    finally:
        shown.stop()
    seconds = time.perf_counter() - started
    if as_json:
        out.print(json.dumps({"version": 1, **report.as_dict(), "seconds": round(seconds, 3)}), soft_wrap=True)
    else:
        print_report(report, seconds)
    return 0 if report.equal or repair else DIFFERENCES


def print_report(report: VerifyReport, seconds: float) -> None:
    counts = "  ".join(f"{k}: {report.counts[k]:,}" for k in KINDS)
    rate = report.keys / seconds if seconds > 0 else 0.0
    out.print(f"instruments: {report.instruments:,}  keys checked: {report.keys:,}  ({seconds:.1f}s, {rate:,.0f}/s)")
    out.print(counts)
    if report.unmaintained:
        out.print(f"not maintained (unknown model or no window_days in window_spec): {report.unmaintained:,}")
    for kind, shown in report.examples.items():
        for f in shown:
            out.print(f"  {kind:<9} {f.entity_id}  {f.as_of_date}  {f.model_id}  window {f.window_days}")
    if report.repaired is not None:
        r = report.repaired
        out.print(f"repaired: {r.keys:,} key(s): {r.changed:,} written, {r.removed:,} removed")
    if report.equal:
        out.print("equal: the table holds SPEC section 3 over prices_daily for this selection")
    elif report.repaired is None:
        err.print("differences found: `embedder verify --repair` with the same selection rewrites them")
