"""Bad input is kept and explained, never silently dropped; hostile ids are stored verbatim; a storm
of restatements ends in the batch result. Real broker, real PostgreSQL, real worker."""

from __future__ import annotations

import csv
import json
import math
import random
import re
import subprocess
from collections import Counter
from datetime import date, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer

from backfill.synthetic import YAHOO_HEADER, synthetic_rows
from shared.broker.publisher import PricePublisher
from shared.broker.topics import ensure_topics
from shared.contract.messages import LIVE_RUN, PriceRow, Tick
from tests.support.cli import EMBEDDER, run_command, settings_of
from tests.support.helpers import assert_same_embeddings, expected, load_synthetic, stored, wait_for
from tests.support.markets import MODELS, live_market
from tests.support.workers import get, live_tick_committed, start_live_worker, stop, tick_live
from tests.support.workers import start_web_worker as start_worker

BASE = {"k": "row", "run": LIVE_RUN, "i": "SYN000", "d": "2019-06-03", "c": 10.0, "vol": 100.0}
FIELDS = ["i", "d", "c", "vol"]

# --- what a hostile producer can send (each is one message that must be dead-lettered) ---------
not_json = st.binary(max_size=300).filter(lambda b: not b.strip().startswith(b"{"))
wrong_type = st.tuples(
    st.sampled_from(FIELDS),
    st.one_of(
        st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.none()
    ),
).map(lambda fv: json.dumps({**BASE, fv[0]: fv[1]}).encode())
missing = st.sets(st.sampled_from(FIELDS), min_size=1).map(
    lambda drop: json.dumps({k: v for k, v in BASE.items() if k not in drop}).encode()
)
bad_close = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0]), st.floats(max_value=-1e-9, allow_nan=False)
).map(lambda c: json.dumps({**BASE, "c": c}).encode())
bad_volume = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]), st.floats(max_value=-1e-9, allow_nan=False)
).map(lambda v: json.dumps({**BASE, "vol": v}).encode())
unknown_instrument = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=40).map(
    lambda s: json.dumps({**BASE, "i": "NOPE-" + s}).encode()
)
absurd_date = st.one_of(st.dates(max_value=date(1899, 12, 31)), st.dates(min_value=date(2100, 1, 1))).map(
    lambda d: json.dumps({**BASE, "d": d.isoformat()}).encode()
)
control_chars = st.text(st.characters(max_codepoint=31), min_size=1, max_size=3).map(
    lambda s: json.dumps({**BASE, "i": "SYN" + s}).encode()
)
oversized = st.integers(70_000, 200_000).map(lambda n: json.dumps({**BASE, "pad": "x" * n}).encode())
BAD = {
    "not JSON": not_json,
    "wrong type": wrong_type,
    "missing field": missing,
    "bad close": bad_close,
    "bad volume": bad_volume,
    "unknown instrument": unknown_instrument,
    "absurd date": absurd_date,
    "control characters": control_chars,
    "oversized": oversized,
}
bad_message = st.sampled_from(sorted(BAD)).flatmap(lambda kind: st.tuples(st.just(kind), BAD[kind]))
N_BAD = 1000


def generate_bad_messages(n: int) -> list[tuple[str, bytes]]:
    """n messages drawn by hypothesis, one example each (a list of 1,000 in one example would
    overrun hypothesis's buffer)."""
    drawn: list[tuple[str, bytes]] = []

    @settings(
        max_examples=n, database=None, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
    )
    @given(bad_message)
    def collect(message: tuple[str, bytes]) -> None:
        drawn.append(message)

    collect()
    assert len(drawn) >= n // 2  # hypothesis may stop early once it has seen enough distinct cases
    return [drawn[k % len(drawn)] for k in range(n)]


@pytest.mark.slow
def test_a_thousand_malformed_messages_are_dead_lettered_and_valid_rows_still_embed(db_url, cli_env, tmp_path):
    bad = generate_bad_messages(N_BAD)
    seed = random.randrange(10**6)
    load_synthetic(db_url, tmp_path, instruments=6)
    settings_ = settings_of(cli_env)
    ensure_topics(settings_)
    env = cli_env | {"EMBEDDER_LAG_SAMPLE_SECONDS": "1"}
    with psycopg.connect(db_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT instrument_id FROM instruments ORDER BY 1")]
        valid = conn.execute("""SELECT instrument_id, trade_date, close, volume FROM prices_daily
                                WHERE trade_date >= '2019-03-01' ORDER BY trade_date, instrument_id""").fetchall()
    last = valid[-1][1]
    rng = random.Random(seed)
    slots = sorted(rng.randrange(len(valid) + 1) for _ in bad)  # where each bad message goes
    worker, base = start_worker(env, tmp_path)
    try:
        publisher = PricePublisher(settings_)
        raw = KafkaProducer(bootstrap_servers=settings_.kafka_bootstrap_servers, acks="all", max_request_size=1_048_576)
        k = 0
        for n, (instrument_id, trade_date, close, volume) in enumerate(valid):
            while k < len(bad) and slots[k] == n:
                raw.send(settings_.prices_topic, key=f"bad-{k}".encode(), value=bad[k][1])
                raw.flush()  # the bad message lands between the valid rows around it
                k += 1
            publisher.row(PriceRow(run=LIVE_RUN, i=instrument_id, d=trade_date, c=close, vol=volume))
            if n % 200 == 0:
                publisher.flush()
        for _kind, payload in bad[k:]:
            raw.send(settings_.prices_topic, key=b"bad-tail", value=payload)
        raw.flush()
        raw.close()
        publisher.flush()
        publisher.tick(Tick(run=LIVE_RUN, d=last, w=63, m=tuple(MODELS)))
        publisher.flush()
        publisher.close()

        partitions = int(env["EMBEDDER_PARTITIONS"])
        wait_for(lambda: live_tick_committed(db_url, last, partitions), 300, "the tick after the valid rows")
        assert_same_embeddings(stored(db_url), expected(db_url, ids, [last], 63, MODELS), db_url)

        consumer = KafkaConsumer(
            settings_.dead_letter_topic,
            bootstrap_servers=settings_.kafka_bootstrap_servers,
            auto_offset_reset="earliest",
            consumer_timeout_ms=30_000,
            group_id=None,
        )
        records = []
        for msg in consumer:
            records.append(json.loads(msg.value))
            if len(records) >= N_BAD:
                break
        extra = consumer.poll(timeout_ms=3000)
        consumer.close()
        assert len(records) == N_BAD and not any(extra.values())  # every one, and nothing else
        assert all(r["reason"] for r in records)
        metrics = get(base + "/metrics")[1].decode()
        assert float(re.search(r"^embedder_dead_letters_total ([\d.e+]+)$", metrics, re.M).group(1)) == N_BAD
        reasons = Counter(re.split(r"""[:('"]""", r["reason"])[0].strip() for r in records)
        print(
            f"\nFAULT-TABLE | malformed messages | injected {N_BAD} | dead-lettered {len(records)} | "
            f"by kind {dict(Counter(kind for kind, _ in bad))} | reasons {dict(reasons)}"
        )
        assert worker.poll() is None  # still up
    finally:
        stop(worker)


HOSTILE = [
    "O'Brien\"; DROP TABLE prices_daily; --",
    "semi;colon;id",
    "Ünïcødé-株式-💹",
    "' OR '1'='1",
    "$(rm -rf /)",
    "back\\slash %s %% {}",
]


@pytest.mark.slow
def test_hostile_instrument_ids_are_stored_and_embedded_verbatim(db_url, cli_env, tmp_path):
    rows = synthetic_rows(len(HOSTILE), date(2019, 1, 1), date(2019, 12, 31), seed=11)
    names = {f"SYN{k:03d}": name for k, name in enumerate(HOSTILE)}
    path = tmp_path / "hostile.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(YAHOO_HEADER)
        writer.writerows(r[:7] + [names[r[7]]] for r in rows)

    def run(*args: str) -> subprocess.CompletedProcess:
        return run_command(EMBEDDER + list(args), cli_env, timeout=600)

    imported = run("prices", "import", str(path))
    assert imported.returncode == 0, imported.stderr[-2000:]
    with psycopg.connect(db_url) as conn:
        assert {r[0] for r in conn.execute("SELECT DISTINCT instrument_id FROM prices_daily")} == set(HOSTILE)
    selection = ["--from", "2019-06-03", "--to", "2019-12-31", "--model-id", "numeric-simple-v1"]
    for name in HOSTILE:
        selection += ["--instrument-id", name]
    streamed = run("replay", *selection)
    assert streamed.returncode == 0, streamed.stderr[-2000:]
    got = stored(db_url)
    assert {k[0] for k in got} == set(HOSTILE)  # verbatim, every one
    with psycopg.connect(db_url) as conn:
        conn.execute("TRUNCATE numeric_window_embeddings")
    direct = run("replay", "--direct", *selection)
    assert direct.returncode == 0, direct.stderr[-2000:]
    assert_same_embeddings(got, stored(db_url), db_url)


@pytest.mark.slow
def test_a_storm_of_a_thousand_restatements_ends_in_the_batch_result(db_url, cli_env, tmp_path):
    ids, days = live_market(db_url, tmp_path)
    with psycopg.connect(db_url) as conn:
        # Rows a correction can reach and the stream still holds: within 3N + slack days of the newest.
        reachable = conn.execute(
            "SELECT instrument_id, trade_date FROM prices_daily WHERE trade_date >= %s",
            (days[-1] - timedelta(days=200),),
        ).fetchall()
    worker = start_live_worker(cli_env, tmp_path)
    try:
        tick_live(cli_env, db_url, days)
        rng = random.Random()
        storm = [rng.choice(reachable) for _ in range(1000)]
        with psycopg.connect(db_url) as conn:
            for n in range(0, len(storm), 20):  # 50 transactions of 20 restatements, while it works
                with conn.transaction():
                    for instrument_id, trade_date in storm[n : n + 20]:
                        conn.execute(
                            "UPDATE prices_daily SET close = close * %s, volume = volume + %s "
                            "WHERE instrument_id = %s AND trade_date = %s",
                            (rng.uniform(0.8, 1.25), rng.randrange(0, 1000), instrument_id, trade_date),
                        )
        want = expected(db_url, ids, days, 63, MODELS)
        wait_for(lambda: stored(db_url) == want, 300, "the table to equal the batch result over the corrected data")
        with psycopg.connect(db_url) as conn:
            present = conn.execute("SELECT count(*) FROM numeric_window_embeddings").fetchone()[0]
        print(f"\nFAULT-TABLE | restatements | injected {len(storm)} | expected {len(want)} | present {present}")
        assert present == len(want)
        assert worker.poll() is None
    finally:
        stop(worker)
