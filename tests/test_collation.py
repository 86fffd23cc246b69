"""A market cut where the database's collation is ICU `en-US` (as most production clusters are set up):
`--limit/--offset` take the same instruments whichever path answers (SPEC section 2: the database's
`ORDER BY instrument_id` cuts, never Python's sort of the ids)."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import date
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from streams.registry import DbRegistry
from tests.support.cli import PLATFORM, run_command
from tests.support.helpers import expected, wait_for
from tests.support.platform import EMBEDDER, add_instruments, insert_prices, market_history, upgrade
from tests.support.workers import start_live_worker, stop

# Ids whose ICU en-US order (punctuation and case ignored at the first level) is not their code-point order.
IDS = [
    "a-b",
    "A_C",
    "ab",
    "AB",
    "a.d",
    "Ac",
    "b",
    "_z",
    "Z9",
    "a b",
    "AA",
    "a_a",
    "a-a",
    "Ab",
    "aB",
    "b-1",
    "B_2",
    "b3",
    "B.4",
    "c",
    "C-1",
    "c_2",
    "Ca",
    "cA",
    "d",
    "D.d",
    "_d",
    "e",
    "E-e",
    "ee",
]
LIMIT, OFFSET = 10, 7
AS_OF = date(2019, 12, 20)
MODEL = "num-regime-core-v1"


@pytest.fixture
def icu_db(endpoints):
    """A database created with ICU en-US collation on the test server."""
    server = endpoints["DATABASE_URL"]
    name = f"embedder_icu_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"""CREATE DATABASE "{name}" LOCALE_PROVIDER icu ICU_LOCALE 'en-US' TEMPLATE template0""")
    yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = run_command(cmd, env, timeout=600)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def embedded(url: str) -> set[str]:
    """The instruments of the stored rows, then an empty table for the next path."""
    with psycopg.connect(url) as conn:
        ids = {r[0] for r in conn.execute("SELECT entity_id FROM numeric_window_embeddings")}
        conn.execute("TRUNCATE numeric_window_embeddings, embedder_absent_embeddings")
    return ids


@pytest.mark.slow
def test_every_path_cuts_the_market_in_the_databases_order(icu_db, cli_env, tmp_path):
    env = cli_env | {"DATABASE_URL": icu_db}
    upgrade(env)
    add_instruments(icu_db, IDS)
    with psycopg.connect(icu_db) as conn:
        insert_prices(conn, market_history(IDS, date(2019, 1, 2), AS_OF, seed=11))
        cut = [
            r[0]
            for r in conn.execute(
                """SELECT instrument_id FROM instruments ORDER BY instrument_id LIMIT %s OFFSET %s""", (LIMIT, OFFSET)
            )
        ]
    python_cut = sorted(IDS)[OFFSET : OFFSET + LIMIT]
    assert len(set(cut) ^ set(python_cut)) >= 4  # the collation matters for this cut
    want = {k[0] for k in expected(icu_db, cut, [AS_OF], 63, [MODEL])}  # the plain-loop reference
    assert len(want) >= 6
    flags = [
        "--as-of",
        AS_OF.isoformat(),
        "--market-id",
        "US_EQ",
        "--limit",
        str(LIMIT),
        "--offset",
        str(OFFSET),
        "--model-id",
        MODEL,
    ]

    run(EMBEDDER + ["replay", "--direct", *flags], env)
    direct = embedded(icu_db)
    assert direct == want
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run(EMBEDDER + ["replay", *flags], env | {"TMPDIR": str(scratch)})  # through Kafka (a worker started for the run)
    assert embedded(icu_db) == want
    assert not list(scratch.iterdir())  # the state folder of the worker it started is gone with it

    # The registry of a worker cuts in the same order where a cut travels as limit/offset.
    registry = DbRegistry(icu_db, int(env["EMBEDDER_PARTITIONS"]))
    registry.refresh()
    assert {i for p in range(registry.partitions) for i in registry.selection("US_EQ", LIMIT, OFFSET, p)} == set(cut)

    worker = start_live_worker(env, tmp_path)
    try:

        def loaded() -> bool:
            with psycopg.connect(icu_db) as conn:
                done, queued = conn.execute("SELECT count(published_at), count(*) FROM embedder_bootstrap").fetchone()
            return queued == len(IDS) and done == queued

        wait_for(loaded, 120, "the live bootstrap")
        proc = run(PLATFORM + flags, env)  # the platform's command, answered from the live windows
        assert "answered from the live windows" in proc.stdout
        assert embedded(icu_db) == want
        run(EMBEDDER + ["replay", "--direct", *flags], env)
        verify = run_command(EMBEDDER + ["verify", "--json", *flags], env, timeout=300)
        report = json.loads(verify.stdout)
        assert verify.returncode == 0 and report["equal"] and report["instruments"] == LIMIT
    finally:
        stop(worker)
