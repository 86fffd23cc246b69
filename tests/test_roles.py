"""Installed on a real platform without breaking it (issue 27): roles as a DBA grants them.

A platform database built with plain SQL whose tables belong to an owner role (no superuser), the embedder
installed by that owner (`embedder db upgrade`), the platform's ingestion role allowed to write prices_daily
and nothing else, the embedder's service role (owns nothing) and a read-only consumer role given exactly what
`embedder db grants` prints.
"""

from __future__ import annotations

import subprocess
from datetime import date

import psycopg

from tests.support.cli import EMBEDDER, run_command
from tests.support.helpers import assert_same_embeddings, expected, stored, wait_for
from tests.support.platform import add_instruments, insert_prices, market_history
from tests.support.roles import as_role
from tests.support.workers import live_tick_committed, start_named_worker, stop

MODEL = "num-regime-core-v1"
IDS = [f"R{k:02d}" for k in range(8)]


def capture(url: str, on: bool) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE embedder_capture SET enabled = %s, relay_seen_at = now()", (on,))


def test_a_role_that_may_only_write_prices_keeps_writing_them_with_capture_on_and_off(roles):
    admin, ingest = roles.admin, as_role(roles.admin, roles.ingest)
    add_instruments(admin, ["A", "B"])
    for on in (False, True):
        capture(as_role(admin, roles.owner), on)
        with psycopg.connect(admin) as conn:
            before = conn.execute("SELECT count(*) FROM prices_outbox").fetchone()[0]
        day = date(2020, 3, 2) if on else date(2020, 2, 3)
        with psycopg.connect(ingest) as conn:  # what the ingestion job does, as itself
            insert_prices(conn, [("A", day, 10.0, 100.0), ("B", day, 20.0, 200.0)])
            conn.execute("UPDATE prices_daily SET close = close * 1.01 WHERE trade_date = %s", (day,))
            conn.execute("DELETE FROM prices_daily WHERE instrument_id = 'B' AND trade_date = %s", (day,))
            with conn.cursor().copy(
                "COPY prices_daily (instrument_id, trade_date, open, high, low, close, adjusted_close, volume, "
                "currency) FROM STDIN"
            ) as copy:
                copy.write(f"B\t{day}\t1\t1\t1\t21\t21\t5\tUSD\n")
            conn.commit()
        with psycopg.connect(admin) as conn:
            after = conn.execute("SELECT count(*) FROM prices_outbox").fetchone()[0]
            assert conn.execute("SELECT count(*) FROM prices_daily WHERE trade_date = %s", (day,)).fetchone()[0] == 2
        assert (after > before) == on  # captured only while capture is on


def test_a_legacy_writer_of_embeddings_keeps_its_versions_recorded(roles):
    admin = roles.admin
    with psycopg.connect(as_role(admin, roles.owner)) as conn:
        conn.execute(
            """INSERT INTO numeric_window_embeddings (entity_type, entity_id, window_spec, as_of_date, model_id, vector)
               VALUES ('INSTRUMENT', 'A', '{"window_days": 63, "entity_type": "INSTRUMENT"}', '2020-03-02', %s,
                       '\\x00000000')""",
            (MODEL,),
        )
    with psycopg.connect(as_role(admin, roles.names["legacy"])) as conn:
        conn.execute("UPDATE numeric_window_embeddings SET vector = '\\x01000000' WHERE entity_id = 'A'")
    with psycopg.connect(admin) as conn:
        kept = conn.execute("SELECT vector, cause FROM numeric_window_embedding_versions").fetchall()
    assert kept == [(b"\x00\x00\x00\x00", f"sql: {roles.names['legacy']}")]


def test_the_printed_grants_are_all_the_service_and_reader_roles_need(roles, cli_env, tmp_path):
    admin, owner = roles.admin, as_role(roles.admin, roles.owner)
    add_instruments(admin, IDS)
    rows = market_history(IDS, date(2019, 1, 1), date(2019, 12, 31))
    days = sorted({r[1] for r in rows})[-3:]
    with psycopg.connect(admin) as conn:
        insert_prices(conn, [r for r in rows if r[1] < days[0]])
    owner_env = cli_env | {"DATABASE_URL": owner}
    printed = run_command(
        EMBEDDER + ["db", "grants", "--service-role", roles.service, "--reader-role", roles.reader, "--apply"],
        owner_env,
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert f"GRANT SELECT ON public.prices_daily TO {roles.service};" in printed.stdout
    assert f"GRANT SELECT ON public.embedder_outbox_changes TO {roles.service};" in printed.stdout
    service = cli_env | {"DATABASE_URL": as_role(admin, roles.service)}
    reader = cli_env | {"DATABASE_URL": as_role(admin, roles.reader)}

    def run(env: dict[str, str], *args: str, code: int = 0) -> subprocess.CompletedProcess:
        done = run_command(EMBEDDER + list(args), env)
        assert done.returncode == code, (args, done.returncode, done.stderr[-2000:])
        return done

    run(service, "replay", "--direct", "--from", "2019-06-03", "--to", "2019-06-28", "--market-id", "US_EQ",
        "--model-id", MODEL)  # fmt: skip
    worker = start_named_worker(service, tmp_path, "w", capture=True)
    try:

        def loaded() -> bool:
            with psycopg.connect(admin) as conn:
                done, queued = conn.execute("SELECT count(published_at), count(*) FROM embedder_bootstrap").fetchone()
            return queued > 0 and done == queued

        wait_for(loaded, 180, "the live bootstrap")
        instant = None
        for k, day in enumerate(days):
            with psycopg.connect(as_role(admin, roles.ingest)) as conn:  # the platform, as its own role
                insert_prices(conn, [r for r in rows if r[1] == day])
                if k == 1:
                    conn.execute(  # an old correction and a recent one
                        "UPDATE prices_daily SET close = close * 1.02 WHERE trade_date IN (%s, %s)",
                        (date(2019, 6, 10), days[0]),
                    )
            run(service, "tick", "--as-of", day.isoformat(), "--model-id", MODEL)
            wait_for(lambda d=day: live_tick_committed(admin, d, 4), 180, f"the live tick of {day}")
            if k == 0:
                with psycopg.connect(admin) as conn:
                    instant = conn.execute("SELECT now()").fetchone()[0]
        wait_for(lambda: _settled(admin), 180, "the corrections")
        for args in (("status", "--json"), ("lag", "--json"), ("dead-letters", "--json", "--since", "1d")):
            run(service, *args, code=0)
        run(service, "verify", "--market-id", "US_EQ", "--model-id", MODEL)
        run(service, "replay", "--as-of", days[-1].isoformat(), "--market-id", "US_EQ", "--model-id", MODEL)
    finally:
        stop(worker)
    keys = [*[d for d in sorted({r[1] for r in rows}) if date(2019, 6, 3) <= d <= date(2019, 6, 28)], *days]
    assert_same_embeddings(stored(admin), expected(admin, IDS, keys, 63, [MODEL]), admin)
    out = tmp_path / "now.parquet"
    run(reader, "embeddings", "export", "--from", "2019-06-01", "--to", "2019-12-31", "--model-id", MODEL,
        "--format", "parquet", "-o", str(out))  # fmt: skip
    run(reader, "embeddings", "export", "--from", "2019-06-01", "--to", "2019-12-31", "--model-id", MODEL,
        "--known-at", instant.isoformat(), "--format", "csv", "-o", str(tmp_path / "then.csv"))  # fmt: skip
    run(reader, "embeddings", "history", "--instrument-id", IDS[0], "--as-of", "2019-06-28", "--model-id", MODEL)
    with psycopg.connect(admin, autocommit=True) as conn:  # one grant missing: one clear line naming it
        conn.execute(f"REVOKE SELECT ON numeric_window_embedding_versions FROM {roles.reader}")
    then = ["--known-at", instant.isoformat(), "--format", "csv", "-o", str(tmp_path / "x.csv")]
    denied = run(
        reader, "embeddings", "export", "--from", "2019-06-01", "--to", "2019-12-31", "--model-id", MODEL, *then, code=1
    )
    last = denied.stderr.strip().splitlines()[-1]  # after its progress line
    assert last == "embedder: database error: permission denied for table numeric_window_embedding_versions"
    assert "Traceback" not in denied.stderr


def test_applying_grants_the_owner_may_not_give_is_one_clear_error(roles, cli_env):
    """A hardened database (PUBLIC may not connect): the owner of the tables cannot grant CONNECT on a database
    it does not own; PostgreSQL only warns, `db grants --apply` says which statement the DBA must run."""
    database = roles.admin.rsplit("/", 1)[1]
    with psycopg.connect(roles.admin, autocommit=True) as conn:
        conn.execute(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{database}" FROM PUBLIC')
        conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {roles.owner}')
    done = run_command(
        EMBEDDER + ["db", "grants", "--service-role", roles.service, "--apply"],
        cli_env | {"DATABASE_URL": as_role(roles.admin, roles.owner)},
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"embedder: GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {roles.service}; granted nothing")
    )
    with psycopg.connect(roles.admin) as conn:  # nothing half-applied
        assert not conn.execute(
            "SELECT has_table_privilege(%s, 'numeric_window_embeddings', 'INSERT')", (roles.service,)
        ).fetchone()[0]
    with psycopg.connect(roles.admin, autocommit=True) as conn:  # the DBA runs it; then the rest applies
        conn.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO {roles.service}')
        conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {roles.reader}')
    assert roles.granted().startswith(f"GRANT CONNECT, TEMPORARY ON DATABASE {database}")


def _settled(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute(
            """SELECT NOT EXISTS (SELECT 1 FROM prices_outbox WHERE published_at IS NULL)
                  AND NOT EXISTS (SELECT 1 FROM embedder_recompute_queue)"""
        ).fetchone()[0]


def test_the_platform_tables_may_live_in_another_schema(database_factory, cli_env):
    """The platform keeps its tables in schema `platform` (its roles' search_path): the embedder installs there,
    `db grants` names that schema, and the service role works in it."""
    import uuid

    from tests.support.platform import PLATFORM_DDL

    admin = database_factory("schema")
    tag = uuid.uuid4().hex[:6]
    owner, service = f"owner_{tag}", f"service_{tag}"
    database = admin.rsplit("/", 1)[1]
    with psycopg.connect(admin, autocommit=True) as conn:
        for role in (owner, service):
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}' NOSUPERUSER")
            conn.execute(f'ALTER ROLE {role} IN DATABASE "{database}" SET search_path = platform')
        conn.execute(f"CREATE SCHEMA platform AUTHORIZATION {owner}")
        conn.execute("SET search_path TO platform")
        conn.execute(PLATFORM_DDL)
        for table in ("instruments", "prices_daily", "numeric_window_embeddings"):
            conn.execute(f"ALTER TABLE platform.{table} OWNER TO {owner}")
    try:
        owner_env = cli_env | {"DATABASE_URL": as_role(admin, owner)}
        for args in (["db", "upgrade"], ["db", "grants", "--service-role", service, "--apply"]):
            done = run_command(EMBEDDER + args, owner_env)
            assert done.returncode == 0, done.stderr[-2000:]
        assert f"GRANT SELECT ON platform.prices_daily TO {service};" in done.stdout
        with psycopg.connect(admin) as conn:
            conn.execute("SET search_path TO platform")
            conn.execute(
                "INSERT INTO instruments (instrument_id, market_id, asset_class, symbol, currency) "
                "VALUES ('S1', 'US_EQ', 'EQUITY', 'S1', 'USD')"
            )
            rows = [r for r in market_history(["S1"], date(2019, 1, 1), date(2019, 6, 30)) if r[0] == "S1"]
            insert_prices(conn, rows)
        service_env = cli_env | {"DATABASE_URL": as_role(admin, service)}
        june = ["--from", "2019-06-03", "--to", "2019-06-28", "--market-id", "US_EQ", "--model-id", MODEL]
        done = run_command(EMBEDDER + ["replay", "--direct", *june], service_env)
        assert done.returncode == 0, done.stderr[-2000:]
        with psycopg.connect(admin) as conn:
            stored_here = conn.execute(
                "SELECT count(*) FROM platform.numeric_window_embeddings WHERE entity_id = 'S1'"
            ).fetchone()[0]
            assert conn.execute("SELECT to_regclass('public.numeric_window_embeddings')").fetchone()[0] is None
        assert stored_here == len([d for d in {r[1] for r in rows} if date(2019, 6, 3) <= d <= date(2019, 6, 28)])
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"REASSIGN OWNED BY {owner} TO CURRENT_USER")
            for role in (owner, service):
                conn.execute(f"DROP OWNED BY {role}")
                conn.execute(f"DROP ROLE {role}")
