"""The one-shot replay as a user waits for it (issue 28, item 1): `embedder replay` and `embedder replay --direct`
of the whole real data set as whole processes, their start-up included, and the CPU-seconds every process spent
(the command, the worker, PostgreSQL, the broker) per 1,000 embeddings.

Rounds (3 by default) of three runs of the same selection into an empty table each: `--direct`; through Kafka with
no worker running (the command starts its own: its start, the run's topics and the final settle are in the time);
through Kafka with a worker already running (started, ready and quiet before the clock starts). Every stream table
is checked byte-equal to `--direct`'s. Figures are medians over the rounds.

Run: `make bench BENCH_ARGS="--only whole-command"` (or `.venv/bin/python -m benchmarks.whole_command [ROUNDS]`).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg

from benchmarks.bench import CHECKSUM, MODEL, Figures, for_app, query
from benchmarks.live import start_worker, stop, wait_ready
from benchmarks.proc_cpu import kind_of, process_cpu, tree_cpu_seconds
from shared.contract.config import Settings, settings_env

SELECTION = ["--from", "2015-01-12", "--to", "2020-01-10", "--market-id", "US_EQ", "--model-id", MODEL]
COMMAND = [sys.executable, "-m", "embedder.cli", "replay"]


class CpuSampler:
    """CPU-seconds per process kind over a run, processes that start and end during it included: /proc is
    read every `every` seconds and each process's last reading kept (a process living less than that is
    missed: a few milliseconds of CPU at most)."""

    def __init__(self, every: float = 0.05):
        self.every = every
        self.command_pid: int | None = None
        self.start: dict[int, tuple[str, float]] = self._read()
        self.last: dict[int, tuple[str, float]] = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> dict[int, tuple[str, float]]:
        me = os.getpid()
        readings = process_cpu(lambda pid, cmd: "command" if pid == self.command_pid else kind_of(cmd))
        readings.pop(me, None)
        return readings

    def _keep(self, readings: dict[int, tuple[str, float]]) -> None:
        """Take the newest CPU reading of each process, and its kind as first known: an exited process not yet
        reaped (a zombie) has an empty command line, and a forked child shows its parent's until it execs."""
        for pid, (kind, seconds) in readings.items():
            known = self.last.get(pid)
            if known is not None and kind == "other":
                kind = known[0]
            self.last[pid] = (kind, seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._keep(self._read())

    def stop(self) -> Counter:
        self._stop.set()
        self._thread.join()
        self._keep(self._read())
        used: Counter = Counter()
        for pid, (kind, seconds) in self.last.items():
            used[kind] += seconds - self.start.get(pid, (kind, 0.0))[1]
        return used


def timed_command(settings: Settings, args: list[str]) -> tuple[float, Counter, str]:
    """Run `embedder replay ARGS` to completion: (wall seconds, CPU-seconds by kind, its stdout)."""
    env = os.environ | settings_env(settings) | {"EMBEDDER_WEB_PORT": "0"}
    sampler = CpuSampler()
    started = time.perf_counter()
    proc = subprocess.Popen(COMMAND + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler.command_pid = proc.pid
    out, err = proc.communicate(timeout=1800)
    seconds = time.perf_counter() - started
    cpu = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"embedder replay {' '.join(args)} exited {proc.returncode}: {err[-2000:]}")
    return seconds, cpu, out


def wait_quiet(pid: int, idle_cpu: float = 0.05, every: float = 1.0, timeout: float = 60.0) -> None:
    """Wait until the worker is a worker already running: readiness starts its companions (the correction process's
    imports, the parity audit's first sweep: ~0.45 CPU-s), which a worker that runs already has behind it."""
    deadline = time.monotonic() + timeout
    before = tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(every)
        now = tree_cpu_seconds(pid)
        if now - before < idle_cpu:
            return
        before = now
    raise RuntimeError(f"the worker was still busy {timeout:.0f}s after it was ready")


def empty_table(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE numeric_window_embeddings, numeric_window_embedding_versions, embedder_tick_commits")


NAMES = ("direct", "stream_own_worker", "stream_running_worker")
KINDS = ("command", "worker", "postgres", "kafka", "other")


def run_once(name: str, base: Settings, url: str, workdir: Path) -> tuple[float, Counter, int, object]:
    """One whole command into an empty table: (wall seconds, CPU-seconds by kind, embeddings, checksum)."""
    empty_table(url)
    settings = for_app(base, url, uuid.uuid4().hex[:8])
    worker = None
    if name == "stream_running_worker":
        folder = workdir / f"{name}-{settings.app_id}"
        worker = start_worker(settings, folder, capture=False)
        wait_ready(folder)
        wait_quiet(worker.pid)
    try:
        seconds, cpu, _ = timed_command(settings, SELECTION + (["--direct"] if name == "direct" else []))
    finally:
        if worker is not None:
            stop(worker)
    count, checksum = query(url, CHECKSUM)[0]
    return seconds, cpu, count, checksum


def measure_whole_command(f: Figures, base: Settings, url: str, workdir: Path, rounds: int = 3) -> None:
    """`rounds` rounds of the three runs, one after the other in each round; figures `whole_*`.

    Each figure is the median over the rounds, and each ratio the median of the rounds' own ratios: a stream run
    is compared with the `--direct` run of its round, minutes apart on the same machine (one run of each moved the
    CPU ratio by 0.03 between two full benches of the same code)."""
    embeddings = 0
    direct_sum = None
    runs: dict[str, list[tuple[float, Counter]]] = {name: [] for name in NAMES}
    equal: dict[str, bool] = {name: True for name in NAMES}
    for r in range(rounds):
        for name in NAMES:
            seconds, cpu, count, checksum = run_once(name, base, url, workdir)
            if name == "direct" and direct_sum is None:
                embeddings, direct_sum = count, checksum
            equal[name] = equal[name] and checksum == direct_sum and count == embeddings
            runs[name].append((seconds, cpu))
            total = 1000 * sum(cpu.values()) / max(count, 1)
            print(f"    round {r + 1} {name:<22} {seconds:6.2f} s  {total:.4f} CPU-s per 1k", flush=True)
    f.put("whole_rounds", rounds)
    per_1k = 1000 / max(embeddings, 1)
    for name in NAMES:
        cpus = [c for _, c in runs[name]]
        f.put(f"whole_{name}_s", round(statistics.median(s for s, _ in runs[name]), 2))
        f.put(f"whole_{name}_equals_direct", equal[name])
        for kind in KINDS:
            f.put(f"whole_{name}_cpu_{kind}_s_per_1k", round(per_1k * statistics.median(c[kind] for c in cpus), 4))
        f.put(f"whole_{name}_cpu_s_per_1k", round(per_1k * statistics.median(sum(c.values()) for c in cpus), 4))
    f.put("whole_embeddings", embeddings)
    for name in NAMES[1:]:
        walls = [d[0] / s[0] for d, s in zip(runs["direct"], runs[name])]
        cpu_ratios = [sum(s[1].values()) / max(sum(d[1].values()), 1e-9) for d, s in zip(runs["direct"], runs[name])]
        f.put(f"whole_{name}_vs_direct_by_round", [round(x, 3) for x in walls])
        f.put(f"whole_{name}_cpu_vs_direct_by_round", [round(x, 3) for x in cpu_ratios])
        f.put(f"whole_{name}_vs_direct", round(statistics.median(walls), 3))
        f.put(f"whole_{name}_cpu_vs_direct", round(statistics.median(cpu_ratios), 3))


def main() -> None:
    from benchmarks.bench import data_set_database

    base = Settings()
    with data_set_database(base.database_url) as url:
        f = Figures()
        rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
        measure_whole_command(f, base, url, Path(tempfile.mkdtemp(prefix="embedder-whole-")), rounds)


if __name__ == "__main__":
    main()
