"""The commands as a user runs them: exit codes, one-line errors, nothing written on bad input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import psycopg
import pytest

from tests.support.cli import EMBEDDER, PLATFORM, run_command
from tests.support.helpers import load_synthetic


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_command(cmd, env, timeout=300)


def row_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM numeric_window_embeddings").fetchone()[0]


BAD_REPLAYS = [
    (["--as-of", "2019-02-30", "--market-id", "US_EQ"], "--as-of: not a date"),
    (["--from", "2019-06-01", "--to", "2019-01-01", "--market-id", "US_EQ"], "is after --to"),
    (["--as-of", "2019-06-03", "--market-id", "US_EQ", "--model-id", "num-bogus-v9"], "unknown model_id"),
    (["--as-of", "2019-06-03", "--market-id", "US_EQ", "--limit", "-1"], "--limit must not be negative"),
    (["--as-of", "2019-06-03"], "nothing selected"),
    (["--as-of", "2019-06-03", "--market-id", "US_EQ", "--window-days", "zero"], "--window-days"),
    (["--from", "2019-06-01", "--market-id", "US_EQ"], "both --from and --to"),
    (["--as-of", "2019-06-03", "--market-id", "US_EQ", "--publish-rows"], "--publish-rows"),
]


@pytest.mark.parametrize("args,message", BAD_REPLAYS)
def test_bad_replay_arguments_exit_2_with_one_line_and_write_nothing(cli_env, db_url, tmp_path, args, message):
    load_synthetic(db_url, tmp_path, instruments=3)
    for cmd in (EMBEDDER + ["replay", "--direct", *args], PLATFORM + ["--direct", *args]):
        if cmd[:3] == PLATFORM and "--from" in args:
            continue  # the platform command has no range flags
        proc = run(cmd, cli_env)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], proc.stderr
        assert row_count(db_url) == 0


def test_platform_command_requires_as_of_in_one_line(cli_env):
    proc = run(PLATFORM + ["--market-id", "US_EQ"], cli_env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "backfill_numeric_embeddings: error: the following arguments are required: --as-of"
    ]


def test_platform_command_fills_one_as_of_over_the_market(cli_env, db_url, tmp_path):
    load_synthetic(db_url, tmp_path, instruments=10)
    proc = run(PLATFORM + ["--as-of", "2019-12-31", "--market", "US_EQ", "--model-id", "num-regime-core-v1"], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "embeddings committed:" in proc.stdout  # through Kafka by default
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT entity_id, vector, window_spec FROM numeric_window_embeddings WHERE as_of_date = '2019-12-31'"
        ).fetchall()
    assert 0 < len(rows) <= 10
    assert all(np.frombuffer(v, dtype="<f4").shape == (384,) for _, v, _ in rows)
    assert rows[0][2] == {"window_days": 63, "entity_type": "INSTRUMENT"}
    before = {e: bytes(v) for e, v, _ in rows}
    with psycopg.connect(db_url) as conn:
        conn.execute("TRUNCATE numeric_window_embeddings")
    direct = run(
        PLATFORM + ["--as-of", "2019-12-31", "--market", "US_EQ", "--model-id", "num-regime-core-v1", "--direct"],
        cli_env,
    )
    assert direct.returncode == 0 and "embeddings written:" in direct.stdout
    with psycopg.connect(db_url) as conn:
        after = {e: bytes(v) for e, v in conn.execute("SELECT entity_id, vector FROM numeric_window_embeddings")}
    assert after == before  # the stream and the batch path agree byte for byte


def test_default_model_is_numeric_simple(cli_env, db_url, tmp_path):
    load_synthetic(db_url, tmp_path, instruments=2)
    proc = run(PLATFORM + ["--as-of", "2019-12-31", "--instrument-id", "SYN000"], cli_env)
    assert proc.returncode == 0, proc.stderr
    with psycopg.connect(db_url) as conn:
        model, vec = conn.execute("SELECT model_id, vector FROM numeric_window_embeddings").fetchone()
    assert model == "numeric-simple-v1" and len(vec) == 189 * 4


def test_prices_import_command_reports_rejects(cli_env, db_url, tmp_path):
    f = Path(tmp_path / "p.csv")
    f.write_text(
        "Date,High,Low,Open,Close,Volume,Adj Close,Name\n2020-01-02,2,1,1,1.5,9,1.5,ZZ\n2020-01-03,2,1,1,-1,9,1.5,ZZ\n"
    )
    proc = run(EMBEDDER + ["prices", "import", str(f)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "inserted: 1" in proc.stdout and "rejected: 1 (non-positive close: 1)" in proc.stdout
    missing = run(EMBEDDER + ["prices", "import", str(tmp_path / "nope.csv")], cli_env)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0


def test_wrong_password_is_one_line_without_the_secret(cli_env, db_url):
    from urllib.parse import urlsplit

    parts = urlsplit(db_url)
    secret = "s3cr3t-Pa55word"
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    bad = cli_env | {"DATABASE_URL": f"postgresql://{parts.username}:{secret}@{host}{parts.path}"}
    proc = run(EMBEDDER + ["replay", "--direct", "--as-of", "2019-12-31", "--market-id", "US_EQ"], bad)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert secret not in proc.stderr + proc.stdout
    assert "***" in proc.stderr or "password" in proc.stderr


def test_unreachable_database_is_one_line(cli_env):
    env = cli_env | {"DATABASE_URL": "postgresql://u:topsecret@127.0.0.1:1/db"}
    proc = run(EMBEDDER + ["db", "upgrade"], env)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "topsecret" not in proc.stderr
    assert "cannot connect to PostgreSQL" in proc.stderr


def test_db_upgrade_command_is_idempotent(cli_env):
    proc = run(EMBEDDER + ["db", "upgrade"], cli_env)
    assert proc.returncode == 0 and "up to date" in proc.stdout


@pytest.mark.parametrize("n", ["0", "2000", "many"])
def test_a_repartition_to_an_impossible_count_is_one_line_and_changes_nothing(cli_env, db_url, n):
    proc = run(EMBEDDER + ["live", "repartition", n], cli_env)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    with psycopg.connect(db_url) as conn:
        layout = conn.execute(
            "SELECT partitions, generation FROM embedder_live_layout WHERE app_id = %s", (cli_env["EMBEDDER_APP_ID"],)
        ).fetchall()
    assert layout in ([], [(int(cli_env["EMBEDDER_PARTITIONS"]), 0)])
