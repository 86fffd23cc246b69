"""The CLI as an operator meets it: help for every option, version, completion, schema status, JSON
logs, progress in a log file. Real PostgreSQL and Kafka where a command needs them."""

from __future__ import annotations

import json
import re
import subprocess
import time

import click  # noqa: F401  (typer's commands are click commands)
import pytest
import typer

from embedder.cli import app
from tests.support.cli import EMBEDDER, run_command
from tests.support.helpers import load_synthetic, wait_for


def run(env, *args, check_code: int | None = 0) -> subprocess.CompletedProcess:
    proc = run_command(EMBEDDER + list(args), env, timeout=300)
    if check_code is not None:
        assert proc.returncode == check_code, (args, proc.returncode, proc.stderr[-2000:])
    return proc


def commands(group: click.Command, path: tuple[str, ...] = ()):
    yield path, group
    for name, sub in getattr(group, "commands", {}).items():
        yield from commands(sub, path + (name,))


def test_every_option_has_help_and_a_readable_metavar():
    from typer.testing import CliRunner

    root = typer.main.get_command(app)
    seen = 0
    for path, command in commands(root):
        for param in command.params:
            seen += 1
            if param.param_type_name == "option":
                assert param.help, f"embedder {' '.join(path)} {'/'.join(param.opts)}: no help text"
        text = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "120"}).output
        options = text.split("Options:")[-1]
        assert not re.search(r"<[a-z\[\]]+>|\b(TEXT|INTEGER|FLOAT|PATH)\b", options), f"{path}: {options}"
    assert seen > 40  # every option of every command was looked at


def test_version_and_shell_completion(cli_env):
    from importlib.metadata import version

    assert run(cli_env, "--version").stdout.strip() == f"embedder {version('numeric-window-embedder')}"
    script = run(cli_env, "--show-completion", "bash").stdout
    assert "_EMBEDDER_COMPLETE" in script and "complete" in script
    words = run_command(
        EMBEDDER,
        cli_env | {"_EMBEDDER_COMPLETE": "complete_bash", "COMP_WORDS": "embedder li", "COMP_CWORD": "1"},
        timeout=60,
    )
    assert "live" in words.stdout.split()


def test_db_status_lists_applied_and_pending_migrations(database_factory, cli_env):
    env = cli_env | {"DATABASE_URL": database_factory("status")}
    fresh = run(env, "db", "status", check_code=1)  # pending migrations: a deploy check fails
    assert "pending  0001_base_tables" in fresh.stdout and "0 applied" in fresh.stdout
    run(env, "db", "upgrade")
    done = run(env, "db", "status").stdout
    assert "applied  0008_live_queries" in done and "pending" not in done.split("\n")[0] and ", 0 pending" in done


def test_json_log_lines_for_commands_and_the_worker(cli_env, tmp_path):
    env = cli_env | {"EMBEDDER_LOG_FORMAT": "json"}
    bad = run(env, "replay", "--as-of", "2020-13-01", "--market-id", "X", "--direct", check_code=2)
    (line,) = bad.stderr.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and "--as-of" in record["message"] and record["time"]
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        EMBEDDER + ["worker", "--no-capture", "--loglevel", "info", "--data-dir", str(tmp_path / "state")],
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: (tmp_path / "state" / "web.port").exists() and log.stat().st_size > 2000, 60, "the worker to log"
        )
        time.sleep(2)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every line is one JSON object
    assert len(records) > 5 and {"time", "level", "logger", "message"} <= set(records[0])
    assert any("metrics, health and the lag page" in r["message"] for r in records)


@pytest.mark.slow
def test_progress_off_a_terminal_prints_plain_lines(db_url, cli_env, tmp_path):
    load_synthetic(db_url, tmp_path, instruments=6)
    proc = run(
        cli_env | {"EMBEDDER_PROGRESS_SECONDS": "0.001"},
        "replay",
        "--direct",
        "--from",
        "2019-06-03",
        "--to",
        "2019-12-31",
        "--market-id",
        "US_EQ",
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[")]
    assert len(lines) >= 2 and all(re.match(r"^\[\s*\d+\.\ds\] replay --direct [\d,]+/6 \(\d+%\)", ln) for ln in lines)
    assert "6/6 (100%)" in lines[-1]
    assert "\x1b[" not in proc.stderr  # no terminal control codes in a log file
