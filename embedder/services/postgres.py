"""A real PostgreSQL server from Debian's packages, with its data in a project-local folder."""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from embedder.services.process import (
    ServiceError,
    chown_tree,
    describe,
    is_root,
    pid_alive,
    port_open,
    run,
    wait_until,
)
from shared.contract.config import LOCAL_POSTGRES_PORT

SERVER_USER = "postgres"  # the OS user that runs the server when we are root
DB_USER = "embedder"
DB_PASSWORD = "embedder"
DB_NAME = "embedder"


def find_bindir() -> Path | None:
    """The newest Debian PostgreSQL server bin directory, if one is installed."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def install_server() -> Path:
    """apt-get install the server (root only); returns its bin directory."""
    if not is_root():
        raise ServiceError("PostgreSQL server not found; install it with: sudo apt-get install -y postgresql")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], what="apt-get update", env=env)
    run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
        what="installing postgresql",
        env=env,
    )
    bindir = find_bindir()
    if not bindir:
        raise ServiceError("postgresql was installed but initdb was not found under /usr/lib/postgresql")
    return bindir


@dataclass(frozen=True)
class LocalPostgres:
    """Paths and port of the project-local server under `<services_dir>/postgres`."""

    root: Path
    host: str = "127.0.0.1"
    port: int = LOCAL_POSTGRES_PORT

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}:{DB_PASSWORD}@{self.host}:{self.port}/{DB_NAME}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def _as(self) -> str | None:
        return SERVER_USER if is_root() else None

    def running_pid(self) -> int | None:
        return pid_alive(self.data_dir / "postmaster.pid")

    def status(self) -> str:
        return describe(self.running_pid(), self.host, self.port, f"{self.host}:{self.port}")

    def _init(self, bindir: Path) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pwfile"
        pwfile.write_text(DB_PASSWORD + "\n")
        if is_root():
            chown_tree(self.root, SERVER_USER)
        try:
            run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data_dir.resolve()),
                    "-U",
                    DB_USER,
                    f"--pwfile={pwfile.resolve()}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ],
                as_user=self._as(),
                what="initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# embedder services\n"
                f"port = {self.port}\n"
                f"listen_addresses = '{self.host}'\n"
                f"unix_socket_directories = '{self.socket_dir.resolve()}'\n"
                "max_connections = 100\n"
                "shared_buffers = 256MB\n"
                "max_wal_size = 4GB\n"
                "checkpoint_timeout = 15min\n"
            )

    def up(self, timeout: float = 60.0) -> bool:
        """Start the server unless ours runs; create the database; True when this call started it."""
        started = False
        if not self.running_pid():
            if port_open(self.host, self.port):
                raise ServiceError(
                    f"port {self.port} is already used by a process this project did not start; "
                    "stop it or set DATABASE_URL to use it"
                )
            bindir = find_bindir() or install_server()
            self._init(bindir)
            if is_root():
                chown_tree(self.root, SERVER_USER)
            run(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(self.data_dir.resolve()),
                    "-l",
                    str(self.log_file.resolve()),
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "start",
                ],
                as_user=self._as(),
                what=f"starting PostgreSQL (see {self.log_file})",
            )
            started = True
        wait_until(lambda: port_open(self.host, self.port), timeout, f"PostgreSQL at {self.host}:{self.port}")
        self._create_database()
        return started

    def _create_database(self) -> None:
        import psycopg

        admin_url = f"postgresql://{DB_USER}:{DB_PASSWORD}@{self.host}:{self.port}/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
                conn.execute(f'CREATE DATABASE "{DB_NAME}"')

    def down(self) -> bool:
        """Stop the server this project started (fast shutdown); True if it was running."""
        if not self.running_pid():
            return False
        bindir = find_bindir()
        if not bindir:
            raise ServiceError("pg_ctl not found to stop PostgreSQL")
        run(
            [str(bindir / "pg_ctl"), "-D", str(self.data_dir.resolve()), "-m", "fast", "-w", "stop"],
            as_user=self._as(),
            what="stopping PostgreSQL",
        )
        return True
