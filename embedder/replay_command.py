"""Running a replay selection with progress and a summary (used by `embedder replay` and the platform command)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.progress import TaskID

from backfill.selection import RunSelection
from embedder.console import CountedProgress, err, out, progress
from shared.contract.config import Settings
from shared.store.db import connection
from shared.store.tick_commits import ReplayHooks, StreamResult

if TYPE_CHECKING:
    from backfill.direct import DirectResult
    from shared.broker.lag import GroupLag


def run_replay(
    settings: Settings, selection: RunSelection, direct: bool, publish_rows: bool = False
) -> DirectResult | StreamResult:
    """Run the selection (batch path or through Kafka) and print a summary."""
    if not direct:
        return run_through_kafka(settings, selection, publish_rows)
    from backfill.direct import run_direct

    started = time.perf_counter()
    shown = CountedProgress("replay --direct", "embeddings committed")
    try:
        result = run_direct(
            settings.database_url,
            selection,
            write_batch=settings.write_batch_embeddings,
            on_start=lambda instruments, dates: shown.start(instruments, f"{dates} as_of date(s)"),
            on_progress=shown.advance,
        )
    finally:
        shown.stop()
    print_summary(
        selection,
        result,
        started,
        shown.started_at,
        "",
        f"embeddings written: {result.embeddings:,}  insufficient history: {result.insufficient:,}"
        + (f"  refused: {result.refused:,} (stored computed from newer prices, left alone)" if result.refused else ""),
    )
    return result


def run_through_kafka(settings: Settings, selection: RunSelection, publish_rows: bool = False) -> StreamResult:
    """Through the stream: a query tick to the live worker when one relays (answered from its windows
    when they cover it, else from look-backs it reads from prices_daily), else the selection's rows are
    published into a run of their own (a worker is started for it if none is consuming); returns once
    every embedding is committed. `publish_rows`: a run of its own whatever a live worker could answer."""
    from live.queries import live_can_answer, run_live_query

    started = time.perf_counter()
    if publish_rows:
        return replay_through_kafka(settings, selection, started)
    with connection(settings.database_url) as conn:
        ids = selection.instruments(conn)
        dates = selection.as_of_dates(conn, ids) if ids else []
        answer = live_can_answer(conn, settings, selection, ids, dates)
    if answer.ok:
        result = run_live_query(settings, selection, ids, dates, from_database=answer.from_database)
        how = (
            f"answered by the live worker from prices_daily: {answer.reason}"
            if answer.from_database
            else "answered from the live windows"
        )
        print_summary(
            selection,
            result,
            started,
            None,
            f"run: {result.run_id} ({how})  ",
            f"embeddings committed: {result.embeddings:,}",
        )
        return result
    if ids and dates:
        err.print(f"publishing the look-back into a run of its own ({answer.reason})", highlight=False)
    return replay_through_kafka(settings, selection, started)


def replay_through_kafka(settings: Settings, selection: RunSelection, started: float) -> StreamResult:
    """Publish rows and ticks, wait for every embedding to be committed; start a worker if none runs."""
    from backfill.replay import run_stream_replay
    from backfill.worker_process import worker_for_run
    from embedder.worker_fork import fork_worker

    bar = progress()
    tasks: dict[str, TaskID] = {}
    work_started: float | None = None

    def on_start(instruments: int, dates: int, ticks: int) -> None:
        nonlocal work_started
        work_started = time.perf_counter()
        bar.start()
        tasks["rows"] = bar.add_task("rows published", total=None, detail=f"{instruments} instruments")
        tasks["ticks"] = bar.add_task("ticks committed", total=ticks, detail=f"{dates} as_of date(s)")
        tasks["lag"] = bar.add_task("worker backlog", total=None, detail="")

    def on_published(rows: int) -> None:
        bar.advance(tasks["rows"], rows)

    def on_committed(ticks: int, embeddings: int) -> None:
        bar.update(tasks["ticks"], completed=ticks, detail=f"{embeddings:,} embeddings committed")

    def on_lag(group: GroupLag) -> None:
        behind = sum(p.lag for p in group.partitions if p.role == "worker")
        oldest = f", oldest {group.lag_seconds:.0f}s" if group.lag_seconds else ""
        bar.update(tasks["lag"], detail=f"{behind:,} messages behind{oldest} [{group.status}]")

    hooks = ReplayHooks(on_start, on_published, on_committed, on_lag)
    try:
        with worker_for_run(settings, ready_first=False, launch=fork_worker) as worker:
            if worker.started:
                err.print("no worker is consuming: started one for this run", highlight=False)
            # A worker that ran already consumes the topics; one starting now may not have made them yet.
            result = run_stream_replay(
                settings, selection, hooks, topics_exist=not worker.started, before_waiting=worker.ready
            )
    finally:
        bar.stop()
    print_summary(
        selection,
        result,
        started,
        work_started,
        f"run: {result.run_id}  ",
        f"rows published: {result.rows_published:,}  embeddings committed: {result.embeddings:,}",
    )
    return result


def print_summary(
    selection: RunSelection,
    result: DirectResult | StreamResult,
    started: float,
    work_started: float | None,
    head: str,
    counts: str,
) -> None:
    """Two summary lines on stdout: what was selected, then what was done and how fast. The rate is over the
    work (from the moment the selection was resolved and the first row went out), not over the command's
    start-up (a worker started for the run, topics made), which is shown beside it."""
    now = time.perf_counter()
    elapsed = now - started
    begun = work_started if work_started is not None else started
    work = now - begun
    rate = result.embeddings / work if work > 0 else 0.0
    out.print(
        f"{head}instruments: {result.instruments}  as_of dates: {result.as_of_dates}  "
        f"models: {', '.join(selection.model_ids)}  window_days: {selection.window_days}"
    )
    start_up = f"start-up {begun - started:.1f}s, " if begun - started >= 0.05 else ""
    out.print(f"{counts}  elapsed: {elapsed:.1f}s  ({start_up}{rate:,.0f} embeddings/s over {work:.1f}s of work)")
