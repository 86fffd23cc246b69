"""Where the worker spends a streaming replay: py-spy samples the worker process during a replay of
the whole real data set; the top frames (by own time and by time including callees) are printed and
written to bench-results/profile-stream.txt, with the collapsed stacks beside it for a flame graph
(`py-spy` writes them as `--format raw`; any flamegraph tool renders them).

Run: `.venv/bin/python -m benchmarks.profile_stream` (needs py-spy: `pip install py-spy`; as root,
or with ptrace allowed).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg

from backfill.price_import import import_prices
from backfill.replay import run_stream_replay
from backfill.selection import RunSelection
from benchmarks.bench import DATA, MODEL, for_app, fresh_database
from benchmarks.live import start_worker, stop, wait_ready
from benchmarks.proc_cpu import cpu_seconds
from shared.contract.config import Settings
from shared.store.migrate import upgrade

OUT = Path(__file__).resolve().parents[1] / "bench-results"


def top_frames(collapsed: Path, n: int = 25) -> tuple[list[tuple[str, float]], list[tuple[str, float]], int]:
    """(own %, inclusive %) per frame from py-spy's collapsed stacks (`frame;frame;... count`)."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        k = int(count)
        total += k
        frames = [f for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] += k
        for frame in set(frames):
            inclusive[frame] += k
    pct = lambda c: [(f, round(100 * v / total, 1)) for f, v in c.most_common(n)]  # noqa: E731
    return pct(own), pct(inclusive), total


def start_py_spy(pid: int, rate: int, out: Path, *extra: str) -> subprocess.Popen:
    """py-spy sampling process `pid` into collapsed stacks at `out` until it gets SIGINT."""
    spy = shutil.which("py-spy") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "py-spy")
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            *extra,
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", default="now", help="suffix of the output files (e.g. before, after)")
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    args = parser.parse_args()
    base = Settings()
    url = fresh_database(base.database_url)
    upgrade(url)
    import_prices(url, [DATA])
    settings = for_app(base, url, uuid.uuid4().hex[:8])
    workdir = Path(tempfile.mkdtemp(prefix="embedder-profile-"))
    worker = start_worker(settings, workdir / "w", capture=False)
    raw = OUT / f"profile-stream-{args.label}.collapsed"
    OUT.mkdir(exist_ok=True)
    try:
        wait_ready(workdir / "w")
        spy_proc = start_py_spy(worker.pid, args.rate, raw)
        selection = RunSelection.build(
            window_days=63, model_ids=[MODEL], date_from="2015-01-01", date_to="2020-12-31", market_id="US_EQ"
        )
        before = cpu_seconds()
        started = time.perf_counter()
        result = run_stream_replay(settings, selection)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds()
        cpu.subtract(before)
        spy_proc.send_signal(2)
        spy_proc.wait(timeout=60)
    finally:
        stop(worker)
        with psycopg.connect(base.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    own, inclusive, samples = top_frames(raw)
    write_report(
        OUT / f"profile-stream-{args.label}.txt",
        [
            f"streaming replay of the real data: {result.embeddings} embeddings in {seconds:.1f}s "
            f"({result.embeddings / seconds:,.0f}/s); {samples} py-spy samples of the worker at {args.rate}/s",
            "CPU seconds during the replay (2 cores: at most twice the wall time): "
            + ", ".join(f"{k} {v:.1f}" for k, v in cpu.most_common()),
            "",
        ],
        own,
        inclusive,
    )


def write_report(path: Path, head: list[str], own: list[tuple[str, float]], inclusive: list[tuple[str, float]]) -> None:
    """`head`, then the top frames by own time and including callees; written to `path` and printed."""
    lines = (
        head
        + ["own time (% of samples)"]
        + [f"  {p:5.1f}  {f}" for f, p in own]
        + ["", "including callees (% of samples)"]
        + [f"  {p:5.1f}  {f}" for f, p in inclusive]
    )
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
