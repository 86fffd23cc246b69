"""Running the commands as a user does (subprocesses), and the settings a test environment names."""

from __future__ import annotations

import subprocess
import sys

from shared.contract.config import Settings

EMBEDDER = [sys.executable, "-m", "embedder.cli"]
PLATFORM = [sys.executable, "-m", "prometheus.scripts.backfill_numeric_embeddings"]


def run_command(command: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """A command (`EMBEDDER + args`, `PLATFORM + args`) to completion as a user's shell runs it without a
    terminal: output captured as text, no standard input. The caller reads the exit code."""
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def run(env: dict[str, str], *args: str, ok: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """`embedder ARGS` to completion; it must exit 0 (unless `ok` is False: the caller reads the code)."""
    proc = run_command(EMBEDDER + list(args), env, timeout)
    assert not ok or proc.returncode == 0, proc.stderr[-3000:]
    return proc


def settings_of(env: dict[str, str]) -> Settings:
    """The settings a test's environment gives the commands it runs."""
    return Settings(
        _env_file=None,
        database_url=env["DATABASE_URL"],
        kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        app_id=env["EMBEDDER_APP_ID"],
        prices_topic=env["EMBEDDER_PRICES_TOPIC"],
        dead_letter_topic=env["EMBEDDER_DEAD_LETTER_TOPIC"],
        partitions=int(env["EMBEDDER_PARTITIONS"]),
    )
