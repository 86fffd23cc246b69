"""PostgreSQL's CPU per instrument-tick, stage by stage (issue 28, item 2): what a live day of N instruments costs
the database, measured without a worker so that each stage stands alone.

Per day, in a fresh database holding a synthetic market: (1) the platform's INSERT of the day's rows (one
statement, capture on), (2) what the relay asks of PostgreSQL for them (its round number, the changes queued
for the database path, the rows read back against the outbox entry, the mark), (3) the sink's transactions:
the day's embeddings (384 float32 each, one batch per partition with the tick it completes) upserted with
their claims, the version history the triggers keep, and the tick commits. What a worker adds beside these
(its registry, lag and layout reads, the correction path's polls) and autovacuum are not in them.
CPU-seconds of every PostgreSQL process are read from /proc around each stage; for scale, the same day's
embeddings are also copied raw (binary COPY) into a twin of the table, the physical floor of writing them.

Run: `.venv/bin/python -m benchmarks.tick_database --instruments 5000 --days 6`.
"""

from __future__ import annotations

import argparse
import statistics
import uuid
from collections import defaultdict
from datetime import date, timedelta
from urllib.parse import urlsplit

import numpy as np
import psycopg

from benchmarks.bench import MODEL, for_app, fresh_database
from benchmarks.copy_limit import COLUMNS, TYPES
from benchmarks.live import load_quietly
from benchmarks.proc_cpu import cpu_seconds
from live.capture import start_capture
from shared.broker.topics import partition_for
from shared.contract.config import Settings
from shared.contract.messages import LIVE_RUN
from shared.store.db import copy_rows
from shared.store.maintained_keys import queue_captured_changes
from shared.store.migrate import upgrade
from shared.store.outbox import captured_rows, mark_published_while_live, unpublished
from shared.store.write_claims import next_round, stamp
from streams.output import Embedding, EmbeddingBatch, TickDone
from streams.sink import SinkWriter

VECTOR_BYTES = 384 * 4


def postgres_cpu() -> float:
    return cpu_seconds()["postgres"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instruments", type=int, default=5000)
    parser.add_argument("--days", type=int, default=6)
    args = parser.parse_args()
    base = Settings()
    url = fresh_database(base.database_url)
    upgrade(url)
    settings = for_app(base, url, uuid.uuid4().hex[:8])
    ids = [f"TICKDB{n:06d}" for n in range(args.instruments)]
    first = date(2019, 1, 2)
    load_quietly(url, [(i, first, 10.0, 100.0) for i in ids], "SCALE")
    rng = np.random.default_rng(1)
    stages: dict[str, list[float]] = defaultdict(list)
    floor: list[float] = []
    sink = SinkWriter(url)
    with psycopg.connect(url, autocommit=True) as conn:
        start_capture(conn, None, "benchmarks.tick_database")
        for k in range(1, args.days + 1):
            day = first + timedelta(days=k)
            before = postgres_cpu()
            conn.execute(
                """INSERT INTO prices_daily (instrument_id, trade_date, open, high, low, close, adjusted_close,
                                             volume, currency)
                   SELECT i, %s, 10, 10, 10, 10 + %s, 10, 100, 'USD' FROM unnest(%s::text[]) i""",
                (day, k, ids),
            )
            stages["platform INSERT with capture"].append(postgres_cpu() - before)
            before = postgres_cpu()
            entries = [entry.id for entry in unpublished(conn, 100)]
            with conn.transaction():
                round_ = next_round(conn)
                queue_captured_changes(conn, entries)
            stages["relay: changes queued for the database path"].append(postgres_cpu() - before)
            before = postgres_cpu()
            rows = sum(len(part) for e in entries for part in captured_rows(conn, e))
            mark_published_while_live(conn, entries, settings.app_id, settings.live_generation)
            stages["relay: rows read back, entries marked"].append(postgres_cpu() - before)
            assert rows == len(ids), rows
            by_partition: dict[int, list[Embedding]] = defaultdict(list)
            for i in ids:
                by_partition[partition_for(i, base.partitions)].append(
                    Embedding(i, day, MODEL, rng.bytes(VECTOR_BYTES))
                )
            batches = [
                EmbeddingBatch(
                    LIVE_RUN, 63, p, items, (TickDone(day, len(items)),), scope="*", computed_from=stamp(round_, 1)
                )
                for p, items in sorted(by_partition.items())
            ]
            before = postgres_cpu()
            for batch in batches:  # the sink commits each partition's tick on its own, as the worker does
                sink.write_once([batch])
            stages["sink: embeddings, history, tick commits"].append(postgres_cpu() - before)
            with psycopg.connect(url) as copying:
                copying.execute(
                    "CREATE TABLE IF NOT EXISTS bench_copy_limit (LIKE numeric_window_embeddings INCLUDING ALL)"
                )
                stored = copying.execute(
                    f"SELECT {', '.join(COLUMNS)} FROM numeric_window_embeddings WHERE as_of_date = %s", (day,)
                ).fetchall()
                copying.commit()
                before = postgres_cpu()
                with copying.cursor() as cur:
                    copy_rows(cur, "bench_copy_limit", COLUMNS, stored, TYPES)
                copying.commit()
                floor.append(postgres_cpu() - before)
    print(f"PostgreSQL CPU per instrument-tick, {args.instruments} instruments, median of {args.days} days:")
    total = 0.0
    for name, seconds in stages.items():
        ms = statistics.median(seconds) * 1000 / args.instruments
        total += ms
        print(f"  {name:<44} {ms:.4f} ms")
    print(f"  {'total':<44} {total:.4f} ms   (goal 0.03)")
    ms = statistics.median(floor) * 1000 / args.instruments
    print(f"  for scale, a raw COPY of the same embeddings into a twin of the table: {ms:.4f} ms")
    with psycopg.connect(base.database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{urlsplit(url).path[1:]}" WITH (FORCE)')


if __name__ == "__main__":
    main()
