"""The table is always exact (issue 16): history written by the batch path, then restated years back by
the platform's own INSERT/UPDATE/DELETE while the worker runs; after a kill -9 in the middle of it; after
the state folder and changelogs are lost; `embedder verify` and the worker's parity audit.

Real broker, real PostgreSQL, the real worker, real prices (`../shared/data`); the expected table is the
plain-loop reference (`tests/support/reference.py`) over what `prices_daily` holds at the end, for every key the
runs asked for."""

from __future__ import annotations

import csv
import gzip
import json
import re
import signal
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest

from backfill.price_import import import_prices
from tests.conftest import REAL_DATA
from tests.support.cli import run_command
from tests.support.helpers import assert_same_embeddings, stored, wait_for
from tests.support.platform import EMBEDDER, insert_prices
from tests.support.reference import reference_embedding
from tests.support.workers import live_tick_committed, start_live_worker, stop

MODEL = "num-regime-core-v1"
FROM, TO = date(2016, 1, 4), date(2017, 6, 30)  # 18 months of history written by `replay --direct`
WIDE_AS_OF, WIDE_WINDOW = date(2016, 9, 30), 150  # one row of the platform command with its own window
INSTRUMENTS = 24


def run(
    env: dict[str, str], *args: str, ok: bool = True, module: list[str] | None = None
) -> subprocess.CompletedProcess:
    proc = run_command((module or EMBEDDER) + list(args), env, timeout=600)
    if ok:
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def real_subset(tmp_path: Path, count: int) -> Path:
    """The first `count` symbols of the real data set, as a Yahoo-layout file of their own."""
    path = tmp_path / "subset.csv.gz"
    with gzip.open(REAL_DATA, "rt", newline="") as src, gzip.open(path, "wt", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        header = next(reader)
        writer.writerow(header)
        names: list[str] = []
        for row in reader:
            name = row[-1]
            if name not in names:
                if len(names) == count:
                    continue
                names.append(name)
            writer.writerow(row)
    return path


def prices(url: str) -> dict[str, list[tuple[date, float, float]]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT instrument_id, trade_date, close, volume FROM prices_daily").fetchall()
    out: dict[str, list] = {}
    for i, d, c, v in rows:
        out.setdefault(i, []).append((d, c, v))
    return out


def reference_table(url: str, keys: dict[tuple[str, date, str], int]) -> dict[tuple, bytes]:
    """SPEC section 3 by the plain-loop reference over prices_daily now, for every key with its window."""
    by_id = prices(url)
    out = {}
    for (i, d, m), window in keys.items():
        vec = reference_embedding(by_id.get(i, []), d, window, m)
        if vec is not None:
            out[(i, d, m)] = vec
    return out


def history_keys(url: str) -> dict[tuple[str, date, str], int]:
    """The keys the two runs ask for: `replay --direct` over the market and range (each instrument at every
    trade date of the selection), and the platform command's one wide row."""
    with psycopg.connect(url) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT instrument_id FROM instruments WHERE market_id = 'US_EQ' ORDER BY instrument_id"
            )
        ]
        dates = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT trade_date FROM prices_daily WHERE trade_date BETWEEN %s AND %s", (FROM, TO)
            )
        ]
    keys = {(i, d, MODEL): 63 for i in ids for d in dates}
    keys[(ids[0], WIDE_AS_OF, MODEL)] = WIDE_WINDOW
    return keys


def write_history(env: dict[str, str], tmp_path: Path) -> dict:
    """Real prices of INSTRUMENTS instruments and 18 months of embeddings written by the batch path (plus a
    window-150 row of the platform command); returns the keys the runs asked for."""
    if not REAL_DATA.exists():
        pytest.skip(f"real data set not present at {REAL_DATA}")
    url = env["DATABASE_URL"]
    import_prices(url, [real_subset(tmp_path, INSTRUMENTS)])
    keys = history_keys(url)
    run(
        env,
        "replay",
        "--direct",
        "--market-id",
        "US_EQ",
        "--from",
        FROM.isoformat(),
        "--to",
        TO.isoformat(),
        "--model-id",
        MODEL,
    )
    first = min(k[0] for k in keys)
    run(
        env,
        "--as-of",
        WIDE_AS_OF.isoformat(),
        "--window-days",
        str(WIDE_WINDOW),
        "--instrument-id",
        first,
        "--model-id",
        MODEL,
        "--direct",
        module=[sys.executable, "-m", "prometheus.scripts.backfill_numeric_embeddings"],
    )
    want = reference_table(url, keys)
    assert_same_embeddings(stored(url), want, url)
    assert len(want) > 8_000
    return keys


@pytest.fixture
def history(cli_env, tmp_path) -> tuple[dict[str, str], str, dict]:
    """A database with history written by the batch path (`write_history`): (env, url, the keys runs asked for)."""
    return cli_env, cli_env["DATABASE_URL"], write_history(cli_env, tmp_path)


def settled(url: str) -> bool:
    """Every captured change published and recomputed."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            """SELECT NOT EXISTS (SELECT 1 FROM prices_outbox WHERE published_at IS NULL)
                  AND NOT EXISTS (SELECT 1 FROM embedder_recompute_queue)"""
        ).fetchone()[0]


def assert_exact(url: str, keys: dict) -> None:
    wait_for(lambda: settled(url), 240, "every captured change to be recomputed")
    assert_same_embeddings(stored(url), reference_table(url, keys), url)


def worker_ready(url: str) -> bool:
    with psycopg.connect(url) as conn:
        loaded, queued = conn.execute("SELECT count(published_at), count(*) FROM embedder_bootstrap").fetchone()
    return queued > 0 and loaded == queued


def restate(url: str, ids: list[str]) -> tuple[int, list[tuple]]:
    """The platform restates history 14 to 20 months back with plain SQL, in one transaction and in many:
    closes and volumes updated, rows deleted (one instrument's for four months: its embeddings there fall
    below the threshold), a late row inserted (a day nobody traded). Returns the rows changed, and the
    four months deleted."""
    a, b, c, d = ids[1], ids[2], ids[3], ids[4]
    changed = 0
    with psycopg.connect(url) as conn:
        with conn.transaction():  # one transaction
            changed += conn.execute(
                """UPDATE prices_daily SET close = close * 1.07, volume = volume + 11
                                       WHERE instrument_id = %s AND trade_date BETWEEN '2016-03-01' AND '2016-03-10'""",
                (a,),
            ).rowcount
            changed += conn.execute(
                "DELETE FROM prices_daily WHERE instrument_id = %s AND trade_date = '2016-05-02'", (b,)
            ).rowcount
            insert_prices(conn, [(c, date(2016, 6, 4), 77.5, 1_000_000.0)])  # a Saturday: a late print
            changed += 1
        removed = conn.execute(
            """DELETE FROM prices_daily WHERE instrument_id = %s
                                  AND trade_date BETWEEN '2016-04-01' AND '2016-07-31'
                                  RETURNING instrument_id, trade_date, close, volume""",
            (d,),
        ).fetchall()
        changed += len(removed)
        conn.commit()
        for k, day in enumerate([date(2016, 2, 1) + timedelta(days=7 * n) for n in range(6)]):  # many transactions
            changed += conn.execute(
                "UPDATE prices_daily SET close = close + %s WHERE instrument_id = %s AND "
                "trade_date = (SELECT min(trade_date) FROM prices_daily WHERE instrument_id = %s "
                "AND trade_date >= %s)",
                (0.25 * (k + 1), a, a, day),
            ).rowcount
            conn.commit()
        changed += conn.execute(
            "UPDATE prices_daily SET volume = volume * 2 WHERE instrument_id = %s "
            "AND trade_date BETWEEN '2016-05-01' AND '2016-05-31'",
            (ids[0],),
        ).rowcount
        conn.commit()
    return changed, removed


@pytest.mark.slow
def test_history_restated_years_back_reaches_every_stored_embedding(history, tmp_path):
    env, url, keys = history
    ids = sorted({k[0] for k in keys})
    worker = start_live_worker(env, tmp_path)
    try:
        wait_for(lambda: worker_ready(url), 120, "the live bootstrap")
        before = stored(url)
        changed_rows, removed = restate(url, ids)
        assert changed_rows > 60
        assert_exact(url, keys)
        after = stored(url)
        changed = {k for k in after if before.get(k) != after[k]}
        assert {k[0] for k in changed} >= {ids[1], ids[2], ids[3], ids[0]}  # every restated instrument moved
        assert (ids[0], WIDE_AS_OF, MODEL) in changed  # the platform command's window-150 row too
        assert set(before) - set(after)  # keys that fell below the threshold were removed ...
        with psycopg.connect(url) as conn:
            absent = conn.execute(
                "SELECT count(*) FROM embedder_absent_embeddings WHERE entity_id = %s", (ids[4],)
            ).fetchone()[0]
        assert absent > 0  # ... and are remembered: putting the rows back brings them in again
        with psycopg.connect(url) as conn:
            for row in removed:  # late INSERTs, a row per transaction
                insert_prices(conn, [row])
                conn.commit()
        assert_exact(url, keys)
        restored = stored(url)
        assert {k: v for k, v in restored.items() if k[0] == ids[4]} == {
            k: v for k, v in before.items() if k[0] == ids[4]
        }
        assert worker.poll() is None
    finally:
        stop(worker)


@pytest.mark.slow
def test_kill_9_during_corrections_then_state_and_changelogs_lost(history, tmp_path):
    env, url, keys = history
    ids = sorted({k[0] for k in keys})
    env = env | {"EMBEDDER_PARITY_AUDIT_SECONDS": "0", "EMBEDDER_CORRECTION_BATCH_INSTRUMENTS": "1"}
    worker = start_live_worker(env, tmp_path)
    try:
        wait_for(lambda: worker_ready(url), 120, "the live bootstrap")
        with psycopg.connect(url) as conn:  # a large restatement: every close of 12 instruments in 2016
            restated = conn.execute(
                """UPDATE prices_daily SET close = close * 1.013 WHERE instrument_id = ANY(%s)
                                       AND trade_date BETWEEN '2016-01-01' AND '2016-12-31'""",
                (ids[:12],),
            ).rowcount
        assert restated > 2500

        def half_done() -> bool:
            with psycopg.connect(url) as conn:
                left = conn.execute("SELECT count(*) FROM embedder_recompute_queue").fetchone()[0]
                published = conn.execute("SELECT count(*) FROM prices_outbox WHERE published_at IS NULL").fetchone()[0]
            return published == 0 and 0 < left < restated

        wait_for(half_done, 120, "the correction path to be part way through", interval=0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        worker = start_live_worker(env, tmp_path)
        assert_exact(url, keys)
    finally:
        stop(worker)

    # The state folder and the changelogs are lost (a new app id and data folder); the previous run had
    # also written recent history with the batch path, inside what the live windows hold now.
    run(
        env,
        "replay",
        "--direct",
        "--market-id",
        "US_EQ",
        "--from",
        "2019-12-02",
        "--to",
        "2020-01-10",
        "--model-id",
        MODEL,
    )
    with psycopg.connect(url) as conn:
        recent = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT trade_date FROM prices_daily WHERE trade_date BETWEEN '2019-12-02' AND '2020-01-10'"
            )
        ]
    keys = keys | {(i, d, MODEL): 63 for i in ids for d in recent}
    lost = env | {"EMBEDDER_APP_ID": env["EMBEDDER_APP_ID"] + "-new"}
    (tmp_path / "new").mkdir()
    worker = start_live_worker(lost, tmp_path / "new")
    try:
        log = tmp_path / "new" / "worker.log"
        wait_for(
            lambda: "the live windows are rebuilt from prices_daily" in log.read_text(errors="replace"),
            60,
            "the new worker to say it rebuilds the state it cannot read",
        )
        wait_for(lambda: worker_ready(url), 120, "the live bootstrap of the new app id")
        with psycopg.connect(url) as conn:
            conn.execute(
                """UPDATE prices_daily SET close = close * 0.97 WHERE instrument_id = %s
                            AND trade_date IN ('2016-08-01', '2019-12-16')""",
                (ids[5],),
            )
            conn.execute("DELETE FROM prices_daily WHERE instrument_id = %s AND trade_date = '2019-12-20'", (ids[6],))
        assert_exact(url, keys)
    finally:
        stop(worker)


def outbox_entries(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM prices_outbox").fetchone()[0]


def capturing(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT embedder_capturing()").fetchone()[0]


def tick_again(env: dict[str, str], url: str, as_of: date) -> None:
    """Forget the live tick of `as_of` (rows and commits), tick it again and wait for it: what it writes
    comes from the live windows alone."""
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM numeric_window_embeddings WHERE as_of_date = %s", (as_of,))
        conn.execute("DELETE FROM embedder_tick_commits WHERE run_id = 'live' AND as_of_date = %s", (as_of,))
    run(env, "tick", "--as-of", as_of.isoformat(), "--model-id", MODEL)
    wait_for(lambda: live_tick_committed(url, as_of, int(env["EMBEDDER_PARTITIONS"])), 120, f"the live tick of {as_of}")


@pytest.mark.slow
def test_a_batch_only_database_keeps_no_outbox_and_the_live_service_resyncs_what_it_missed(cli_env, tmp_path):
    """Issue 17: where the live service is not enabled nothing is captured (history imported, written by
    the batch path and restated, no outbox entry); enabling it gives the table of `replay --direct` over
    the prices as they are now, and so does a restart after capture lapsed without a relay — the live
    windows included (a row deleted during the gap leaves them)."""
    url = cli_env["DATABASE_URL"]
    with psycopg.connect(url) as conn:  # as `db upgrade` leaves a database where no worker ever ran
        conn.execute("UPDATE embedder_capture SET enabled = false, relay_seen_at = NULL")
    keys = write_history(cli_env, tmp_path)
    ids = sorted({k[0] for k in keys})
    changed_rows, _ = restate(url, ids)
    assert changed_rows > 60
    assert outbox_entries(url) == 0
    with psycopg.connect(url) as conn:
        newest = conn.execute("SELECT max(trade_date) FROM prices_daily").fetchone()[0]
        recent = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT trade_date FROM prices_daily WHERE trade_date > %s ORDER BY 1",
                (newest - timedelta(days=20),),
            )
        ]
    env = cli_env | {"EMBEDDER_CAPTURE_IDLE_HOURS": str(8 / 3600)}  # capture lapses 8 s after the last relay
    worker = start_live_worker(env, tmp_path)
    try:
        wait_for(lambda: worker_ready(url), 120, "the live bootstrap")
        assert capturing(url)
        assert_exact(url, keys)  # the restatement nobody captured is in the table
        code, report = verify(env, "--market-id", "US_EQ", "--model-id", MODEL)  # every stored and absent key
        assert code == 0 and report["equal"], json.dumps(report)[:3000]  # is what `replay --direct` writes
        keys |= {(i, newest, MODEL): 63 for i in ids}
        tick_again(env, url, newest)
        assert_exact(url, keys)
    finally:
        stop(worker)

    wait_for(lambda: not capturing(url), 60, "capture to lapse without a relay")
    before = outbox_entries(url)
    gone = ids[5]
    with psycopg.connect(url) as conn:
        assert (
            conn.execute(
                "DELETE FROM prices_daily WHERE instrument_id = %s AND trade_date = %s", (gone, recent[-3])
            ).rowcount
            == 1
        )  # inside the live window of the newest day
        assert (
            conn.execute(
                "UPDATE prices_daily SET close = close * 0.97 WHERE instrument_id = %s AND trade_date "
                "BETWEEN '2016-09-01' AND '2016-09-09'",
                (ids[6],),
            ).rowcount
            > 3
        )  # history
    assert outbox_entries(url) == before  # lapsed: nothing captured
    worker = start_live_worker(env, tmp_path)
    try:
        wait_for(
            lambda: "capture is on again after a gap" in (tmp_path / "worker.log").read_text(errors="replace"),
            60,
            "the worker to resync after the gap",
        )
        wait_for(lambda: worker_ready(url), 120, "the live bootstrap after the gap")
        assert_exact(url, keys)
        tick_again(env, url, newest)  # from the rebuilt windows: without the deleted row
        assert_exact(url, keys)
        assert worker.poll() is None
    finally:
        stop(worker)


def verify(env: dict[str, str], *args: str) -> tuple[int, dict]:
    proc = run(env, "verify", "--json", *args, ok=False)
    assert proc.returncode in (0, 3), proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.slow
def test_verify_finds_what_differs_and_repair_rewrites_it_and_the_audit_counts_a_mismatch(history, tmp_path):
    env, url, keys = history
    selection = ["--market-id", "US_EQ", "--from", FROM.isoformat(), "--to", TO.isoformat()]
    code, report = verify(env, *selection)
    assert code == 0 and report["equal"] and report["keys_checked"] >= len(keys) - 1
    ids = sorted({k[0] for k in keys})
    with psycopg.connect(url) as conn:  # by hand: a vector changed, a row deleted, an extra row
        conn.execute(
            """UPDATE numeric_window_embeddings SET vector = overlay(vector placing '\\x00000000'::bytea from 5)
                        WHERE entity_id = %s AND as_of_date = '2016-06-01' AND model_id = %s""",
            (ids[1], MODEL),
        )
        conn.execute(
            """DELETE FROM numeric_window_embeddings WHERE entity_id = %s AND as_of_date = '2017-02-01'
                        AND model_id = %s""",
            (ids[2], MODEL),
        )
        conn.execute(
            """INSERT INTO numeric_window_embeddings (entity_type, entity_id, window_spec, as_of_date, model_id,
                                                               vector)
                        VALUES ('INSTRUMENT', %s, '{"window_days": 63, "entity_type": "INSTRUMENT"}', '2016-06-01',
                                %s, '\\x00000000')""",
            (ids[3] + "-NO-SUCH", MODEL),
        )
        conn.execute(
            """INSERT INTO numeric_window_embeddings (entity_type, entity_id, window_spec, as_of_date, model_id,
                                                               vector)
                        VALUES ('INSTRUMENT', %s, '{"window_days": 63, "entity_type": "INSTRUMENT"}', '2016-06-01',
                                %s, '\\x00000000')""",
            ("NO-SUCH-ID", MODEL),
        )
    code, report = verify(env, *selection)
    assert code == 3 and not report["equal"]
    assert (report["different"], report["missing"], report["duplicate"]) == (1, 1, 0)
    assert report["examples"]["different"][0]["entity_id"] == ids[1]
    assert report["examples"]["missing"][0]["as_of_date"] == "2017-02-01"
    code, whole = verify(env)  # the whole table: stored and recorded keys, so the stray ids are extra
    assert code == 3 and whole["extra"] == 2 and whole["different"] == 1
    plain = run(env, "verify", *selection, ok=False)
    assert plain.returncode == 3 and "different: 1" in plain.stdout and ids[1] in plain.stdout
    code, repaired = verify(env, *selection, "--repair")
    assert code == 0 and repaired["repaired"]["written"] == 2 and repaired["repaired"]["removed"] == 0
    code, repaired = verify(env, "--repair")
    assert code == 0 and repaired["repaired"]["written"] == 0 and repaired["repaired"]["removed"] == 2
    for args in (selection, []):
        code, report = verify(env, *args)
        assert code == 0 and report["equal"]
    assert_same_embeddings(stored(url), reference_table(url, keys), url)

    # The parity audit of a running worker counts a mismatch made by hand (and queues it for repair).
    audit_env = env | {"EMBEDDER_PARITY_AUDIT_SECONDS": "1", "EMBEDDER_PARITY_SAMPLE_KEYS": "100000"}
    worker = start_live_worker(audit_env, tmp_path)
    try:
        port_file = tmp_path / "state" / "web.port"
        wait_for(port_file.exists, 60, "the worker's web port")
        metrics_url = f"http://127.0.0.1:{port_file.read_text().strip()}/metrics"
        wait_for(lambda: worker_ready(url) and settled(url), 120, "the live bootstrap and the captured import")
        with psycopg.connect(url) as conn:
            conn.execute(
                """UPDATE numeric_window_embeddings SET vector = overlay(vector placing '\\x00000000'::bytea
                            from 1) WHERE entity_id = %s AND as_of_date = '2016-11-01' AND model_id = %s""",
                (ids[5], MODEL),
            )

        def mismatches() -> float:
            import urllib.request

            text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
            found = re.search(r'^embedder_parity_mismatches_total\{kind="different"\} (\S+)$', text, re.M)
            return float(found.group(1)) if found else 0.0

        wait_for(lambda: mismatches() >= 1, 90, "the audit to count the changed vector")
        status = json.loads(run(audit_env, "status", "--json").stdout)
        assert status["parity"]["mismatches"] >= 1 and status["parity"]["examples"][0]["entity_id"] == ids[5]
        assert_exact(url, keys)  # repaired through the correction path
    finally:
        stop(worker)
