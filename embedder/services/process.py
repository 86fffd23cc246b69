"""Small process helpers shared by the local Kafka and PostgreSQL services."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from shared.contract.errors import EmbedderError


class ServiceError(EmbedderError):
    """A local service could not be installed, started or stopped."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid_file: Path) -> int | None:
    """The pid recorded in `pid_file` if that process still runs."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:  # a zombie child of ours counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        if state == "Z":
            return None
    except (OSError, IndexError):
        pass
    return pid


def describe(pid: int | None, host: str, port: int, where: str) -> str:
    """One status word for a service: running, starting, stopped, or someone else's port."""
    if pid and port_open(host, port):
        return f"running (pid {pid}) at {where}"
    if pid:
        return f"starting (pid {pid})"
    if port_open(host, port):
        return f"port {port} is served by a process this project did not start"
    return "stopped"


def poll_until(check: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll `check` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> None:
    """Poll `check` until true, else ServiceError after `timeout` seconds."""
    if not poll_until(check, timeout, interval):
        raise ServiceError(f"timed out after {timeout:.0f}s waiting for {what}")


def is_root() -> bool:
    return os.geteuid() == 0


def run(cmd: Sequence[str], *, as_user: str | None = None, what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run `cmd` (as `as_user` when root); a failure raises ServiceError with its output tail."""
    if as_user and is_root():
        cmd = ["runuser", "-u", as_user, "--", *cmd]
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ServiceError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc


def chown_tree(path: Path, user: str) -> None:
    """Give `path` and everything under it to `user` (needed to run PostgreSQL as root)."""
    info = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, info.pw_uid, info.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), info.pw_uid, info.pw_gid, follow_symlinks=False)
