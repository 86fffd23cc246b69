"""The worker a one-shot replay starts, forked from the command instead of a new Python process.

A new process imports everything again: 0.70 CPU-s of the worker's ~1.3 before it is ready, in every one-shot
replay, where the command has imported most of it already (pydantic, psycopg, numpy, kafka-python, the project's
contract: 0.47 of the 0.70). Forked, the worker imports only what the command lacks (faust, aiokafka, the
stream's modules) and then runs exactly what `embedder worker ARGS` runs (`embedder.cli.main`), with the
environment and log of that command, and its command line: `ps` and `/proc/PID/cmdline` show `python -m
embedder.cli worker --for-run ...`, as for a worker started with `exec` (`show_command_line`).

The fork happens in the command's work thread before it opens anything the worker could share (no connection,
no client, no thread but the main one waiting on its signals). The child never returns into the command: it
leaves with `os._exit`, so none of the command's `finally` blocks, exit handlers or buffered output run twice.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import BinaryIO, NoReturn

from shared.contract.config import load_settings
from shared.signals import stop_with_parent


class ForkedWorker:
    """The forked worker, with the part of `subprocess.Popen`'s interface a run uses (`WorkerChild`)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Its exit code once it has ended (negative: the signal that ended it), else None; reaps it."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: it has ended, its code is lost
                self.returncode = -1
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"embedder worker (pid {self.pid})", timeout or 0.0)
            time.sleep(0.02)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def show_command_line(*forms: list[str]) -> list[str] | None:
    """Make `/proc/self/cmdline` (what `ps`, `pgrep` and the tests read) say the first of `forms` that fits, as if
    this process had been started with it: written over the command's own arguments, in the memory the kernel
    reads them from (`arg_start`..`arg_end` of /proc/self/stat), NUL-separated and padded with NULs. Returns the
    form shown; None, and nothing changed, where none fits (the command's own arguments were shorter)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # fields 48 and 49 of proc(5), counted after the name
    except (OSError, IndexError, ValueError):
        return None
    for form in forms:
        shown = b"\0".join(os.fsencode(a) for a in form) + b"\0"
        if start and len(shown) <= end - start:
            ctypes.memmove(start, shown.ljust(end - start, b"\0"), end - start)
            return form
    return None


def fork_worker(args: list[str], env: dict[str, str], log_file: BinaryIO) -> ForkedWorker:
    """Fork, and in the child run `embedder ARGS` with `env` as its whole environment and its output to `log_file`
    (`backfill.worker_process.Launch`)."""
    sys.stdout.flush()  # what the command buffered is written once, by the command
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return ForkedWorker(pid)
    _become_worker(args, env, log_file.fileno())


def _become_worker(args: list[str], env: dict[str, str], log_fd: int) -> NoReturn:
    """In the child: the command's objects stay as they were (never collected, never closed), its signal handlers
    give way to a new process's, and `embedder ARGS` runs until it exits."""
    code = 1
    try:
        gc.freeze()  # the command's objects: never scanned by the collector, their pages never copied for it
        stop_with_parent()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(null)
        # the command's own sys.stdout and sys.stderr may be other objects than the files 1 and 2 (a test's capture)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (lives as long as this process)
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        command = [sys.executable, "-m", "embedder.cli"]
        show_command_line([*command, *args], [*command, *args[:2]], ["embedder.cli", *args[:2]])
        os.environ.clear()
        os.environ.update(env)
        load_settings.cache_clear()  # the command's settings, read once: the worker's are read from `env`
        sys.argv = [sys.argv[0], *args]
        from embedder.cli import main

        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
