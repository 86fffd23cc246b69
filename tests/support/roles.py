"""A platform database with its roles as a DBA makes them: an owner (no superuser) who installs the embedder, the
platform's ingestion role, the embedder's service role, a read-only consumer role and a legacy writer of
embeddings (tests/test_roles.py, tests/test_secure_kafka.py)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg

from tests.support.cli import EMBEDDER
from tests.support.platform import create_platform_database


@dataclass
class Roles:
    admin: str  # the server's superuser, on the platform database
    owner: str
    ingest: str
    service: str
    reader: str
    names: dict[str, str]

    def granted(self) -> str:
        """`embedder db grants --apply` run as the owner; returns what it printed."""
        done = subprocess.run(
            EMBEDDER + ["db", "grants", "--service-role", self.service, "--reader-role", self.reader, "--apply"],
            env={"PATH": "/usr/bin:/bin", "DATABASE_URL": as_role(self.admin, self.owner)},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}:pw-{role}@{parts.hostname}:{parts.port}"))


@contextmanager
def platform_roles(database_factory) -> Iterator[Roles]:
    """A platform database built with plain SQL, owned by its owner role, the embedder installed by that owner."""
    admin = create_platform_database(database_factory)
    tag = uuid.uuid4().hex[:6]
    names = {k: f"{k}_{tag}" for k in ("owner", "ingest", "service", "reader", "legacy")}
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names.values():
            conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'pw-{name}' NOSUPERUSER NOCREATEDB NOCREATEROLE")
        owner = names["owner"]
        conn.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {owner}")
        for table in ("instruments", "prices_daily", "numeric_window_embeddings"):
            conn.execute(f"ALTER TABLE {table} OWNER TO {owner}")
        # What the platform's DBA granted its ingestion job, and a legacy writer of embeddings.
        conn.execute(f"GRANT SELECT ON instruments TO {names['ingest']}")
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON prices_daily TO {names['ingest']}")
        conn.execute(f"GRANT SELECT, UPDATE ON numeric_window_embeddings TO {names['legacy']}")
    upgraded = subprocess.run(
        EMBEDDER + ["db", "upgrade"],
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": as_role(admin, owner)},
        capture_output=True,
        text=True,
    )
    assert upgraded.returncode == 0, upgraded.stderr[-2000:]
    try:
        yield Roles(admin, owner, names["ingest"], names["service"], names["reader"], names)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"REASSIGN OWNED BY {owner} TO CURRENT_USER")
            for name in names.values():
                conn.execute(f"DROP OWNED BY {name}")
                conn.execute(f"DROP ROLE {name}")
