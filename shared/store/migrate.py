"""Schema migrations with yoyo; its own version tables (`_yoyo_*`) coexist with Alembic's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yoyo import get_backend, read_migrations

from shared.contract.config import redact_url, scrub_secret
from shared.contract.errors import ServiceUnavailable

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


@dataclass(frozen=True)
class UpgradeResult:
    applied: list[str]
    already_applied: int


def _yoyo_url(url: str) -> str:
    """yoyo picks its psycopg 3 backend from the `postgresql+psycopg` scheme."""
    scheme, rest = url.split("://", 1)
    return f"postgresql+psycopg://{rest}" if scheme in ("postgres", "postgresql") else url


def _backend(database_url: str):
    try:
        return get_backend(_yoyo_url(database_url))
    except Exception as e:  # yoyo wraps driver errors in several types
        detail = scrub_secret(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, database_url)
        raise ServiceUnavailable(f"cannot connect to PostgreSQL at {redact_url(database_url)}: {detail}") from None


def migration_status(database_url: str) -> tuple[list[str], list[str]]:
    """(applied, pending) migration ids, in order."""
    backend = _backend(database_url)
    migrations = read_migrations(str(MIGRATIONS_DIR))
    pending = {m.id for m in backend.to_apply(migrations)}
    return [m.id for m in migrations if m.id not in pending], [m.id for m in migrations if m.id in pending]


def upgrade(database_url: str) -> UpgradeResult:
    """Apply every pending migration under yoyo's lock; a second run applies nothing."""
    backend = _backend(database_url)
    migrations = read_migrations(str(MIGRATIONS_DIR))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return UpgradeResult(applied=[m.id for m in pending], already_applied=len(migrations) - len(pending))
