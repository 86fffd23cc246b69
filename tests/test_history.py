"""Every embedding as it was known (issue 19): versions kept by the database whatever writes the table,
reads as known at an instant, exports, the history of one key, and the switch. Real PostgreSQL; the
live-service end of it (corrections through the worker, a repair) is in tests/test_history_live.py."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest

from backfill.direct import run_direct
from backfill.selection import RunSelection
from embedder import read_embeddings, read_embeddings_frame
from shared.contract.errors import BadArguments
from shared.store.embedding_history import prune_versions, switch_history, versions_of
from shared.store.embedding_store import set_cause, upsert_embeddings
from shared.store.maintained_keys import record_absent
from tests.support.cli import EMBEDDER, run_command
from tests.support.markets import instant

MODEL = "numeric-simple-v1"
DAY = date(2020, 1, 2)
SPEC = '{"window_days": 2, "entity_type": "INSTRUMENT"}'


def vec(*values: float) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


def table(url: str) -> dict[tuple, bytes]:
    with psycopg.connect(url) as conn:
        return {
            (i, d): bytes(v)
            for i, d, v in conn.execute(
                "SELECT entity_id, as_of_date, vector FROM numeric_window_embeddings WHERE model_id = %s", (MODEL,)
            )
        }


def read(url: str, **kw) -> dict[tuple, bytes]:
    e = read_embeddings(MODEL, date_from=DAY, date_to=DAY + timedelta(days=5), database_url=url, **kw)
    return {(i, d.astype(object)): v.tobytes() for i, d, v in zip(e.instrument_ids, e.as_of_dates, e.vectors)}


def versions(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("""SELECT entity_id, change, cause_kind, cause FROM numeric_window_embedding_versions
                               ORDER BY version_id""").fetchall()


def test_every_writer_is_caught_identical_rewrites_are_not_and_reads_as_known_at_give_the_table_then(db_url):
    with psycopg.connect(db_url) as conn:  # the project's writer, as the sink and the batch path use it
        set_cause(conn, "direct", "replay --direct (test)")
        upsert_embeddings(conn, [(i, DAY, MODEL, 2, vec(k, k)) for k, i in enumerate(["A", "B", "C", "D"])])
        conn.commit()
    first = instant(db_url)
    at_first = table(db_url)
    with psycopg.connect(db_url) as conn:
        set_cause(conn, "replay", "the same run again")
        assert upsert_embeddings(conn, [(i, DAY, MODEL, 2, vec(k, k)) for k, i in enumerate(["A", "B", "C", "D"])]) == 0
        conn.commit()
        conn.execute("UPDATE numeric_window_embeddings SET vector = vector WHERE entity_id = 'B'")  # plain SQL, same
        conn.commit()
    assert versions(db_url) == []  # identical rewrites keep nothing
    with psycopg.connect(db_url) as conn:
        set_cause(conn, "correction", "prices of A 2019-12-31")
        upsert_embeddings(conn, [("A", DAY, MODEL, 2, vec(9, 9))])
        conn.commit()
        # The platform's own SQL: a legacy INSERT (a new key: no version), an UPDATE and a DELETE.
        conn.execute(
            f"""INSERT INTO numeric_window_embeddings (entity_type, entity_id, window_spec, as_of_date,
                                                               model_id, vector)
                         VALUES ('INSTRUMENT', 'E', '{SPEC}', %s, %s, %s)""",
            (DAY, MODEL, vec(5, 5)),
        )
        conn.execute("UPDATE numeric_window_embeddings SET vector = %s WHERE entity_id = 'B'", (vec(7, 7),))
        conn.execute("DELETE FROM numeric_window_embeddings WHERE entity_id = 'C'")
        conn.commit()
    second = instant(db_url)
    at_second = table(db_url)
    with psycopg.connect(db_url) as conn:
        set_cause(conn, "correction", "prices of D 2019-12-30")
        record_absent(conn, [("D", DAY, MODEL, 2)])  # too little history now: the row goes
        conn.commit()
        conn.execute("TRUNCATE numeric_window_embeddings")
        conn.commit()
    kept = versions(db_url)
    assert [(i, change, kind) for i, change, kind, _ in kept[:4]] == [
        ("A", "update", "correction"),
        ("B", "update", "sql"),
        ("C", "delete", "sql"),
        ("D", "delete", "correction"),
    ]
    assert sorted((i, change, kind) for i, change, kind, _ in kept[4:]) == [
        ("A", "truncate", "sql"),
        ("B", "truncate", "sql"),
        ("E", "truncate", "sql"),
    ]
    assert kept[0][3] == "correction: prices of A 2019-12-31" and kept[1][3].startswith("sql: ")

    assert table(db_url) == {} and read(db_url) == {}
    assert read(db_url, known_at=first) == at_first and len(at_first) == 4
    assert read(db_url, known_at=second) == at_second and at_second != at_first
    frame = read_embeddings_frame(MODEL, as_of=DAY, database_url=db_url, known_at=second)
    day = np.datetime64(DAY, "ns")
    assert list(frame.index) == [(i, day) for i in ["A", "B", "D", "E"]] and frame.shape == (4, 2)
    assert frame.loc[("A", day)].to_numpy().tobytes() == vec(9, 9) and set(frame.dtypes) == {np.dtype("float32")}


def test_history_lists_versions_with_their_causes_and_drift(db_url, cli_env):
    with psycopg.connect(db_url) as conn:
        for k, (kind, why) in enumerate([("direct", "first"), ("correction", "prices of A"), ("repair", "verify")]):
            set_cause(conn, kind, why)
            upsert_embeddings(conn, [("A", DAY, MODEL, 2, vec(1, 1 + k))])
            conn.commit()
        got = versions_of(conn, "A", DAY, MODEL)
    assert [v.vector for v in got] == [vec(1, 1), vec(1, 2), vec(1, 3)]
    assert [v.cause for v in got] == ["correction: prices of A", "repair: verify", None]  # what ended each
    assert got[-1].recorded_to is None and got[0].recorded_to == got[1].recorded_from
    proc = run_command(
        EMBEDDER
        + ["embeddings", "history", "--instrument-id", "A", "--as-of", str(DAY), "--model-id", MODEL, "--json"],
        cli_env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    listed = json.loads(proc.stdout)["versions"]
    assert [v["ended_by"] for v in listed] == ["update", "update", None]
    assert listed[0]["drift_max_abs"] == 1.0 and 0.9 < listed[0]["drift_cosine"] < 1.0
    assert listed[-1]["recorded_to"] is None and listed[-1]["drift_max_abs"] is None


def test_history_off_keeps_nothing_and_refuses_reads_as_known_at_until_on_again(db_url):
    with psycopg.connect(db_url) as conn:
        upsert_embeddings(conn, [("A", DAY, MODEL, 2, vec(1, 1))])
        switch_history(conn, False, "test")
        conn.commit()
        upsert_embeddings(conn, [("A", DAY, MODEL, 2, vec(2, 2))])
        conn.commit()
    assert versions(db_url) == []
    with pytest.raises(BadArguments, match="history is off"):
        read(db_url, known_at=datetime.now(UTC))
    before_on = instant(db_url)
    with psycopg.connect(db_url) as conn:
        switch_history(conn, True, "test")
        conn.commit()
    after_on = instant(db_url)
    with pytest.raises(BadArguments, match="before the history kept"):
        read(db_url, known_at=before_on)
    assert read(db_url, known_at=after_on) == {("A", DAY): vec(2, 2)}


def test_retention_prunes_old_versions_and_moves_where_reads_are_exact(db_url):
    with psycopg.connect(db_url) as conn:
        upsert_embeddings(conn, [("A", DAY, MODEL, 2, vec(1, 1))])
        conn.commit()
        upsert_embeddings(conn, [("A", DAY, MODEL, 2, vec(2, 2))])
        conn.commit()
        # As if written 11 and 10 days ago, on a database whose history is complete from a month ago.
        conn.execute(
            "UPDATE numeric_window_embedding_versions SET recorded_to = recorded_to - interval '10 days', "
            "recorded_from = recorded_from - interval '11 days'"
        )
        conn.execute("UPDATE numeric_window_embeddings SET created_at = created_at - interval '11 days'")
        conn.execute("UPDATE embedder_history SET complete_since = now() - interval '30 days'")
        conn.commit()
        assert len(versions(db_url)) == 1  # moving created_at changed no embedding
        assert prune_versions(conn, 5.0) == 1
        conn.commit()
    with pytest.raises(BadArguments, match="before the history kept"):
        read(db_url, known_at=datetime.now(UTC) - timedelta(days=6))
    assert read(db_url, known_at=datetime.now(UTC) - timedelta(days=4)) == {("A", DAY): vec(2, 2)}


BAD = [
    (["--as-of", "2020-01-02", "--model-id", "num-bogus-v9"], "unknown model_id"),
    (["--as-of", "2020-01-02", "--known-at", "2999-01-01"], "is in the future"),
    (["--from", "2020-02-01", "--to", "2020-01-01"], "upside down"),
    (["--as-of", "2020-01-02", "--format", "xlsx"], "--format must be one of"),
    (["--as-of", "2020-01-02", "--known-at", "yesterday"], "known_at: not a time"),
    (["--as-of", "2020-01-02", "--market-id", "US_EQ", "--instrument-id", "A"], "not both"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_export_arguments_exit_2_with_one_line(cli_env, tmp_path, args, message):
    target = tmp_path / "out.parquet"
    proc = run_command(EMBEDDER + ["embeddings", "export", "-o", str(target), *args], cli_env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not target.exists()


def test_an_export_target_that_exists_is_kept_unless_forced(cli_env, tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("mine")
    command = EMBEDDER + ["embeddings", "export", "--as-of", "2020-01-02", "--format", "csv", "-o", str(target)]
    proc = run_command(command, cli_env, timeout=60)
    assert proc.returncode == 2 and "exists (--force replaces it)" in proc.stderr and target.read_text() == "mine"
    proc = run_command(command + ["--force"], cli_env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert target.read_text().startswith("instrument_id,as_of_date,model_id,window_days")


def test_exports_of_one_as_of_over_the_real_market_round_trip_to_the_table_bytes(real_db_url, cli_env, tmp_path):
    day, model = date(2019, 11, 29), "num-regime-core-v1"
    run_direct(real_db_url, RunSelection.build(window_days=63, model_ids=[model], as_of=str(day), market_id="US_EQ"))
    with psycopg.connect(real_db_url) as conn:
        want = {
            i: bytes(v)
            for i, v in conn.execute(
                "SELECT entity_id, vector FROM numeric_window_embeddings WHERE as_of_date = %s AND model_id = %s",
                (day, model),
            )
        }
    assert len(want) > 450
    env = cli_env | {"DATABASE_URL": real_db_url}
    for fmt in ("parquet", "npy", "csv"):
        proc = run_command(
            EMBEDDER
            + [
                "embeddings",
                "export",
                "--as-of",
                str(day),
                "--market-id",
                "US_EQ",
                "--model-id",
                model,
                "--format",
                fmt,
                "-o",
                str(tmp_path / f"e.{fmt}"),
            ],
            env,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert f"exported {len(want):,} embeddings" in proc.stdout
    parquet = pq.read_table(tmp_path / "e.parquet")
    vectors = parquet.column("vector").combine_chunks().flatten().to_numpy().reshape(len(parquet), -1)
    assert {i: v.astype("<f4").tobytes() for i, v in zip(parquet.column("instrument_id").to_pylist(), vectors)} == want
    assert set(parquet.column("as_of_date").to_pylist()) == {day}
    assert parquet.schema.metadata[b"model_id"] == model.encode()
    npy = np.load(tmp_path / "e.npy", allow_pickle=False)
    assert {str(r["instrument_id"]): r["vector"].tobytes() for r in npy} == want
    assert set(npy["as_of_date"].astype(object)) == {day} and set(npy["window_days"]) == {63}
    csv = np.loadtxt(tmp_path / "e.csv", delimiter=",", skiprows=1, usecols=range(4, 388), dtype=np.float64)
    ids = [line.split(",")[0] for line in (tmp_path / "e.csv").read_text().splitlines()[1:]]
    assert {i: row.astype("<f4").tobytes() for i, row in zip(ids, csv)} == want  # 9 digits round-trip float32


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM numeric_window_embeddings",
        "UPDATE numeric_window_embeddings SET vector = overlay(vector placing '\\x01'::bytea from 1 for 1)",
    ],
)
def test_a_large_change_probes_the_versions_by_key_even_when_they_were_analyzed_empty(db_url, statement):
    """The trigger's lookup of each superseded key's newest version reads that key's versions only, whatever the
    statistics say: analyzed empty, the versions table was probed per row by a sequential scan (migration 0016),
    then by its index on recorded_to with the key as a filter (migration 0017), each probe also reading every
    version the same statement had added before it (quadratic: DELETEs of 152,363 and ~150,000 rows ran 8 and
    over 11 minutes)."""
    rows = [(f"I{k:04d}", DAY, MODEL, 2, vec(k, k)) for k in range(3_000)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        upsert_embeddings(conn, rows)
        conn.execute("TRUNCATE numeric_window_embedding_versions")
        conn.execute("ANALYZE numeric_window_embedding_versions")  # as autovacuum leaves it: empty
        before = versions_read(conn)
        set_cause(conn, "query", "the platform changes every embedding")
        conn.execute(statement)
        after = versions_read(conn)
    assert len(versions(db_url)) == len(rows)  # every superseded row kept as a version
    assert after - before < 2 * len(rows)  # a few per superseded row, not every version added before it


def versions_read(conn: psycopg.Connection) -> int:
    """Rows and index entries of numeric_window_embedding_versions read so far, by any scan (this session's
    counted: flushed first)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")  # the flush happens at this transaction's end
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute(
        """SELECT coalesce(t.seq_tup_read, 0) + coalesce(sum(i.idx_tup_read), 0)
           FROM pg_stat_user_tables t JOIN pg_stat_user_indexes i USING (relid)
           WHERE t.relname = 'numeric_window_embedding_versions' GROUP BY t.seq_tup_read"""
    ).fetchone()[0]
