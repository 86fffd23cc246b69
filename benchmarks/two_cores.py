"""Does work cost more CPU-seconds when both cores are busy? On this machine, memory-bound work does: what the
stream's CPU ratio to `--direct` partly measures (the stream runs its worker, PostgreSQL and the broker side by side,
`--direct` its command and one backend mostly in turn).

Each kind of work runs alone, then twice at once (two processes), alternating; the CPU-seconds one copy used are
printed (the same work: equal figures mean no cost to running side by side).

Run: `.venv/bin/python -m benchmarks.two_cores`.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import time

import numpy as np


def memory_bound() -> float:
    """Copies of a 64 MB array (memory bandwidth, far beyond the caches): CPU-seconds, its allocation left out."""
    a = np.ones(8 * 1024 * 1024)
    b = np.ones_like(a)
    started = time.process_time()
    for _ in range(60):
        np.copyto(b, a)
        a, b = b, a
    return time.process_time() - started


def cache_bound() -> float:
    """Hashes of a 1 KB buffer (the CPU's own work, in its caches): CPU-seconds."""
    x = b"a" * 1000
    started = time.process_time()
    for _ in range(1_000_000):
        x = hashlib.sha256(x).digest() * 31
    return time.process_time() - started


def _timed(work_name: str, out: mp.Queue) -> None:
    out.put({"memory-bound": memory_bound, "cache-bound": cache_bound}[work_name]())


def cpu_seconds(work_name: str, copies: int) -> list[float]:
    """CPU-seconds each of `copies` processes running the work at once used."""
    out: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_timed, args=(work_name, out)) for _ in range(copies)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return [out.get() for _ in procs]


def main(rounds: int = 5) -> None:
    for work_name in ("memory-bound", "cache-bound"):
        for _ in range(rounds):
            alone = cpu_seconds(work_name, 1)[0]
            both = cpu_seconds(work_name, 2)
            print(f"  {work_name:13s} alone {alone:.2f} CPU-s; two at once {both[0]:.2f}, {both[1]:.2f} CPU-s each")


if __name__ == "__main__":
    main()
