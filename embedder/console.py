"""Terminal output shared by the commands: consoles, and progress that suits where it goes.

On a terminal: rich's bars. Elsewhere (cron, CI logs, a pipe): a plain line every
`EMBEDDER_PROGRESS_SECONDS` (5) and one at the end, so a log shows how far a long
run is. Piped tables get a wide console, so their headers are never cut.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PIPED_WIDTH = 240
out = Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH)
err = Console(stderr=True, width=None if sys.stderr.isatty() else PIPED_WIDTH)


class PlainProgress:
    """The part of rich's Progress the commands use, printing plain lines to stderr at an interval."""

    def __init__(self, every: float):
        self.every = every
        self.tasks: dict[TaskID, dict] = {}
        self.started = time.monotonic()
        self._printed = 0.0

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.started = time.monotonic()

    def stop(self) -> None:
        if self.tasks:
            self._print()
            self.tasks = {}

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> TaskID:
        task = TaskID(len(self.tasks))
        self.tasks[task] = {
            "description": description,
            "total": total,
            "completed": completed,
            "detail": fields.get("detail", ""),
        }
        return task

    def update(
        self,
        task: TaskID,
        *,
        completed: float | None = None,
        advance: float | None = None,
        total: float | None = None,
        **fields,
    ) -> None:
        t = self.tasks[task]
        if completed is not None:
            t["completed"] = completed
        if advance is not None:
            t["completed"] += advance
        if total is not None:
            t["total"] = total
        if "detail" in fields:
            t["detail"] = fields["detail"]
        if time.monotonic() - self._printed >= self.every:
            self._print()

    def advance(self, task: TaskID, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def _print(self) -> None:
        self._printed = time.monotonic()
        parts = []
        for t in self.tasks.values():
            done = f"{t['completed']:,.0f}" + (
                f"/{t['total']:,.0f} ({100 * t['completed'] / t['total']:.0f}%)" if t["total"] else ""
            )
            parts.append(f"{t['description']} {done}" + (f" {t['detail']}" if t["detail"] else ""))
        sys.stderr.write(f"[{time.monotonic() - self.started:6.1f}s] " + " | ".join(parts) + "\n")
        sys.stderr.flush()


def progress() -> Progress | PlainProgress:
    """A progress display on stderr, so stdout stays clean for machine-readable output."""
    if not err.is_terminal:
        from shared.contract.config import load_settings

        return PlainProgress(load_settings().progress_seconds)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


class CountedProgress:
    """One bar over a command's units of work (instruments, rows) with a running count of what they produced
    ("embeddings committed", "keys checked"): the progress `replay --direct`, `verify` and `embeddings export`
    show. The bar appears at `start` (once the selection is resolved), which is also when the work began."""

    def __init__(self, name: str, produced: str = ""):
        self.name = name
        self.produced = produced
        self.bar = progress()
        self.task: TaskID | None = None
        self.count = 0
        self.started_at: float | None = None

    def start(self, total: int | None, detail: str = "") -> None:
        self.started_at = time.perf_counter()
        self.bar.start()
        self.task = self.bar.add_task(self.name, total=total, detail=detail)

    def advance(self, units: int, produced: int = 0) -> None:
        assert self.task is not None, "start() comes first"
        self.count += produced
        if self.produced:
            self.bar.update(self.task, advance=units, detail=f"{self.count:,} {self.produced}")
        else:
            self.bar.advance(self.task, units)

    def stop(self) -> None:
        self.bar.stop()
