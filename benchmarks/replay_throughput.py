"""Import, `replay --direct` and streaming `replay` on the whole real data set, measured in one run.

Runs against the services in DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS (default: `embedder services up`),
in a fresh database and fresh topics of its own; prints a table and writes bench-results/replay.json.
"""
from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from backfill.direct import run_direct
from backfill.price_import import import_prices
from backfill.replay import run_stream_replay
from backfill.selection import RunSelection
from backfill.worker_process import worker_for_run
from shared.config import Settings
from shared.migrate import upgrade

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sp500_2015_2020_yahoo.csv.gz"
OUT = Path(__file__).resolve().parents[1] / "bench-results" / "replay.json"
CHECKSUM = """SELECT count(*), md5(string_agg(md5(vector), '' ORDER BY entity_id, as_of_date, model_id))
              FROM numeric_window_embeddings"""


def fresh_database(server_url: str) -> str:
    name = f"embedder_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def report(figures: dict, key: str, value) -> None:
    """Record a figure and print it at once, so a run cut short still tells what it measured."""
    figures[key] = value
    print(f"{key:<24}  {value}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stream-instruments", type=int, default=None,
                        help="stream only the first N instruments (the direct path runs them all too, for the ratio)")
    args = parser.parse_args()
    base = Settings()
    tag = uuid.uuid4().hex[:8]
    url = fresh_database(base.database_url)
    settings = base.model_copy(update={
        "database_url": url, "app_id": f"embedder-bench-{tag}", "prices_topic": f"bench-{tag}.prices",
        "embeddings_topic": f"bench-{tag}.embeddings", "dead_letter_topic": f"bench-{tag}.dead-letter"})
    upgrade(url)
    figures: dict[str, float | int | str] = {}
    report(figures, "partitions", settings.partitions)

    t = time.perf_counter()
    imported = import_prices(url, [DATA])
    elapsed = time.perf_counter() - t
    report(figures, "import_seconds", round(elapsed, 2))
    report(figures, "import_rows_per_s", round(imported.rows / elapsed))

    selection = RunSelection.build(window_days=63, model_ids=["num-regime-core-v1"], date_from="2015-01-01",
                                   date_to="2020-12-31", market_id="US_EQ", limit=args.stream_instruments)
    t = time.perf_counter()
    direct = run_direct(url, selection)
    elapsed = time.perf_counter() - t
    report(figures, "instruments", direct.instruments)
    report(figures, "direct_seconds", round(elapsed, 2))
    report(figures, "direct_embeddings", direct.embeddings)
    report(figures, "direct_per_s", round(direct.embeddings / elapsed))
    with psycopg.connect(url) as conn:
        direct_sum = conn.execute(CHECKSUM).fetchone()
        conn.execute("TRUNCATE numeric_window_embeddings")

    t = time.perf_counter()
    with worker_for_run(settings):
        stream = run_stream_replay(settings, selection)
    elapsed = time.perf_counter() - t
    report(figures, "stream_seconds", round(elapsed, 2))
    report(figures, "stream_embeddings", stream.embeddings)
    report(figures, "stream_per_s", round(stream.embeddings / elapsed))
    with psycopg.connect(url) as conn:
        stream_sum = conn.execute(CHECKSUM).fetchone()
    report(figures, "stream_equals_direct", str(stream_sum == direct_sum))
    report(figures, "stream_to_direct_ratio", round(figures["stream_per_s"] / figures["direct_per_s"], 4))

    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    with psycopg.connect(base.database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{urlsplit(url).path[1:]}" WITH (FORCE)')


if __name__ == "__main__":
    main()
