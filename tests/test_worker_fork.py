"""The worker a replay forks from itself (embedder/worker_fork.py): it runs `embedder ARGS` with the environment
and log given, exits with that command's code, shows that command line, and never returns into the command.

The replay's own use of it (a whole run through the forked worker, byte-equal to the reference, and stopped with
the command) is tested where the replay is: tests/test_correction_process.py and tests/test_prompt_stop.py."""

from __future__ import annotations

import os
import time

from embedder.worker_fork import ForkedWorker, fork_worker, show_command_line
from shared.contract.config import load_settings


def test_the_forked_child_runs_the_command_with_its_environment_and_log_and_exits_with_its_code(tmp_path):
    log = tmp_path / "worker.log"
    print("buffered by the parent", end="")  # never flushed by the child: written once, by the parent
    with open(log, "ab") as out:
        version = fork_worker(["--version"], {"PATH": os.environ["PATH"], "EMBEDDER_LOG_FORMAT": "text"}, out)
        wrong = fork_worker(["no-such-command"], dict(os.environ), out)
        assert version.wait(timeout=60) == 0
        assert wrong.wait(timeout=60) == 2
    text = log.read_text()
    assert "embedder 0.1.0" in text and "No such command 'no-such-command'" in text
    assert "buffered by the parent" not in text
    assert version.poll() == 0  # reaped once, its code kept


def test_the_forked_child_reads_its_settings_from_the_environment_given_not_the_commands(tmp_path):
    load_settings()  # the command read its settings (cached for the process) before it forks
    log = tmp_path / "worker.log"
    elsewhere = {"PATH": os.environ["PATH"], "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nowhere"}
    with open(log, "ab") as out:
        code = fork_worker(["db", "status"], elsewhere, out).wait(timeout=60)
    assert code != 0
    assert "cannot connect to PostgreSQL at postgresql://nobody@127.0.0.1:1/nowhere" in log.read_text()


def test_the_forked_child_shows_the_first_command_line_that_fits_in_its_arguments():
    read_end, write_end = os.pipe()
    too_long = ["x" * 100_000]
    pid = os.fork()
    if pid == 0:  # the child: show, tell, wait to be killed
        shown = show_command_line(too_long, ["python", "-m", "embedder.cli", "worker", "--for-run"])
        os.write(write_end, b"1" if shown else b"0")
        time.sleep(60)
        os._exit(0)
    child = ForkedWorker(pid)
    try:
        assert os.read(read_end, 1) == b"1"
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
        assert args[:5] == [b"python", b"-m", b"embedder.cli", b"worker", b"--for-run"]
        assert not any(args[5:])  # the rest of the command's own arguments cleared
    finally:
        child.kill()
        assert child.wait(timeout=10) == -9
        os.close(read_end)
        os.close(write_end)


def test_nothing_is_shown_where_no_form_fits():
    with open("/proc/self/cmdline", "rb") as f:
        before = f.read()
    assert show_command_line(["x" * 100_000]) is None
    with open("/proc/self/cmdline", "rb") as f:
        assert f.read() == before
