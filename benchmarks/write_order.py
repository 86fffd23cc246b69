"""What the order embeddings arrive in costs PostgreSQL (issue 28, item 1: the stream's PostgreSQL CPU above
`--direct`'s for the same rows).

`replay --direct` writes each instrument's years at once, instrument after instrument; the stream writes what a
stretch of days produced across every instrument, in two sink lanes (two backends side by side). This writes the
same vectors (the whole real data set's, computed once by `--direct`) with the one writer both paths use
(`shared.store.embedding_store.write_embeddings`, batches of 20,000) into an empty table three ways, and reads each
backend's CPU-seconds from /proc:

- key order, one connection (as `--direct`);
- day order, one connection (a batch is a stretch of days across every instrument, as a stream lane's);
- day order, two connections side by side, instruments split by partition (the stream's two lanes before
  they took turns at the upsert statement);
- the same two connections taking turns at the upsert statement, one lock (as the stream's sink:
  `streams.sink.SinkWriter`).

`make bench` runs it after the whole-command part (`--only whole-command` too), on the rows that part left; alone:
`.venv/bin/python -m benchmarks.write_order`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from operator import itemgetter

import psycopg

from benchmarks.bench import Figures
from benchmarks.proc_cpu import pid_cpu_seconds
from shared.broker.topics import partition_for
from shared.store.embedding_store import write_embeddings

BATCH = 20_000
Row = tuple  # (entity_id, as_of_date, model_id, window_days, vector)


def stored_rows(url: str) -> list[Row]:
    """Every stored embedding, as the writer takes them."""
    with psycopg.connect(url) as conn:
        return [
            (i, d, m, n, bytes(v))
            for i, d, m, n, v in conn.execute(
                """SELECT entity_id, as_of_date, model_id, (window_spec ->> 'window_days')::int, vector
                   FROM numeric_window_embeddings"""
            )
        ]


def empty(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE numeric_window_embeddings, numeric_window_embedding_versions")
        conn.execute("CHECKPOINT")  # every case starts its full-page writes from the same point


def write_lane(
    url: str, rows: Sequence[Row], spent: list[float], upserting: AbstractContextManager[object] | None = None
) -> None:
    """Write `rows` in batches of `BATCH` in the order given, one transaction each; append the backend's CPU-s."""
    with psycopg.connect(url) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.commit()
        before = pid_cpu_seconds(backend)
        for k in range(0, len(rows), BATCH):
            write_embeddings(conn, rows[k : k + BATCH], upserting=upserting)
            conn.commit()
        spent.append(pid_cpu_seconds(backend) - before)


def timed(url: str, lanes: list[Sequence[Row]], taking_turns: bool = False) -> tuple[float, float]:
    """(wall seconds, PostgreSQL backend CPU-seconds) of writing `lanes` side by side into an empty table;
    `taking_turns`: their upsert statements one at a time."""
    empty(url)
    spent: list[float] = []
    turn = threading.Lock() if taking_turns else None
    threads = [threading.Thread(target=write_lane, args=(url, lane, spent, turn)) for lane in lanes]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, sum(spent)


def orders(rows: list[Row], partitions: int) -> dict[str, tuple[Callable[[], list[Sequence[Row]]], bool]]:
    """Each case: (its lanes, whether they take turns at the upsert)."""
    by_key = sorted(rows, key=itemgetter(0, 1, 2))
    by_day = sorted(rows, key=itemgetter(1, 0, 2))
    lane_of = {i: partition_for(i, partitions) % 2 for i in {r[0] for r in rows}}

    def two_lanes() -> list[Sequence[Row]]:
        return [[r for r in by_day if lane_of[r[0]] == k] for k in (0, 1)]

    return {
        "key_order_1_conn": (lambda: [by_key], False),
        "day_order_1_conn": (lambda: [by_day], False),
        "day_order_2_conns": (two_lanes, False),
        "day_order_2_conns_taking_turns": (two_lanes, True),
    }


def measure_write_order(f: Figures, url: str, partitions: int, rounds: int = 2) -> None:
    """Figures `write_order_*`: each order's best wall time and least backend CPU of `rounds` runs, alternating."""
    rows = stored_rows(url)
    cases = orders(rows, partitions)
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for name, (lanes, taking_turns) in cases.items():
            wall, cpu = timed(url, lanes(), taking_turns)
            was = best.get(name, (wall, cpu))
            best[name] = (min(wall, was[0]), min(cpu, was[1]))
    f.put("write_order_rows", len(rows))
    for name, (wall, cpu) in best.items():
        f.put(f"write_order_{name}_s", round(wall, 2))
        f.put(f"write_order_{name}_postgres_cpu_s", round(cpu, 2))
    base = best["key_order_1_conn"][1]
    for name in ("day_order_1_conn", "day_order_2_conns", "day_order_2_conns_taking_turns"):
        f.put(f"write_order_{name}_cpu_vs_key_order", round(best[name][1] / max(base, 1e-9), 3))


def main() -> None:
    from benchmarks.bench import data_set_database
    from benchmarks.whole_command import SELECTION, timed_command
    from shared.contract.config import Settings

    base = Settings()
    with data_set_database(base.database_url) as url:
        timed_command(base.model_copy(update={"database_url": url}), [*SELECTION, "--direct"])
        measure_write_order(Figures(), url, base.partitions)


if __name__ == "__main__":
    main()
