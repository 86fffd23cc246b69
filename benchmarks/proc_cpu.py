"""CPU-seconds of this machine's processes from /proc, by the kind of process each is (the worker, the broker,
PostgreSQL, a command): what the benchmarks report beside wall time."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

Classify = Callable[[int, str], str]
"""(pid, command line) -> the kind of process it is."""


def processes() -> Iterator[tuple[int, list[str], str]]:
    """Every live process: (pid, the fields of /proc/<pid>/stat after its name, its command line)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        yield int(proc.name), stat[stat.rindex(")") + 2 :].split(), cmd


def stat_cpu_seconds(fields: list[str]) -> float:
    """CPU-seconds (user and system) in the fields of a /proc stat line after its name."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(classify: Classify) -> dict[int, tuple[str, float]]:
    """Every live process: pid -> (its kind, the CPU-seconds it has used, user and system)."""
    return {pid: (classify(pid, cmd), stat_cpu_seconds(f)) for pid, f, cmd in processes()}


def tree_cpu_seconds(pid: int) -> float:
    """CPU-seconds used so far by `pid` and its children (a worker and its correction process)."""
    return sum(stat_cpu_seconds(f) for child, f, _ in processes() if child == pid or int(f[1]) == pid)


def kind_of(cmd: str) -> str:
    """The kind of a process by its command line: worker, kafka, postgres or other."""
    if "embedder.cli worker" in cmd:
        return "worker"
    if "kafka.Kafka" in cmd:
        return "kafka"
    if "postgres" in cmd:
        return "postgres"
    return "other"


def pid_cpu_seconds(pid: int) -> float:
    """CPU-seconds (user and system) one process has used so far; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    return stat_cpu_seconds(stat[stat.rindex(")") + 2 :].split())


def thread_cpu_seconds(pids: list[int]) -> Counter:
    """CPU-seconds the threads of `pids` have used so far, by thread name without its number: RocksDB names its
    flush and compaction threads (`rocksdb:low`, `rocksdb:high`); Python 3.11's threads keep the process's name."""
    used: Counter = Counter()
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip().rstrip("0123456789")
                stat = (task / "stat").read_text()
            except OSError:
                continue
            used[name] += stat_cpu_seconds(stat[stat.rindex(")") + 2 :].split())
    return used


def cpu_seconds() -> Counter:
    """CPU seconds used so far by process kind: this process (the replay: reads, plans, publishes),
    the worker, the Kafka broker, PostgreSQL, everything else."""
    used: Counter = Counter()
    me = os.getpid()
    for kind, seconds in process_cpu(lambda pid, cmd: "replay" if pid == me else kind_of(cmd)).values():
        used[kind] += seconds
    return used
