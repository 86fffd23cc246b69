"""Running a replay selection with progress and a summary (used by `embedder replay` and the platform command)."""
from __future__ import annotations

import time

from backfill.direct import DirectResult, run_direct
from backfill.selection import RunSelection
from embedder.console import err, out, progress
from shared.config import Settings
from shared.errors import BadArguments


def run_replay(settings: Settings, selection: RunSelection, direct: bool) -> DirectResult:
    """Run the selection and print a summary; the streaming path arrives with the stream issue."""
    if not direct:
        raise BadArguments("replay through Kafka is not available in this version; use --direct")
    started = time.perf_counter()
    bar = progress()
    task = None
    committed = 0

    def on_start(instruments: int, dates: int) -> None:
        """Called once the selection is resolved: only then does the bar appear."""
        nonlocal task
        bar.start()
        task = bar.add_task("replay --direct", total=instruments, detail=f"{dates} as_of date(s)")

    def on_progress(instruments: int, embeddings: int) -> None:
        nonlocal committed
        committed += embeddings
        bar.update(task, advance=instruments, detail=f"{committed:,} embeddings committed")

    try:
        result = run_direct(
            settings.database_url,
            selection,
            write_batch=settings.write_batch_embeddings,
            on_start=on_start,
            on_progress=on_progress,
        )
    finally:
        bar.stop()
    elapsed = time.perf_counter() - started
    rate = result.embeddings / elapsed if elapsed > 0 else 0.0
    out.print(
        f"instruments: {result.instruments}  as_of dates: {result.as_of_dates}  "
        f"models: {', '.join(selection.model_ids)}  window_days: {selection.window_days}"
    )
    out.print(
        f"embeddings written: {result.embeddings:,}  insufficient history: {result.insufficient:,}  "
        f"elapsed: {elapsed:.1f}s  ({rate:,.0f} embeddings/s)"
    )
    return result
