"""One owner per table: a statement on one of the embedder's tables lives in that table's module, and every
other module calls it (as `shared/store/embedding_store.py` is the one writer of the embeddings).

A statement's table is the one it writes (`INSERT INTO`, `UPDATE`, `DELETE FROM`, `TRUNCATE`, `LOCK TABLE`),
else the first one it reads (`FROM`); tables it joins or looks up beside are its own business. A string
literal counts as a statement when it holds one of those upper-case keywords; migrations (the DDL) are
exempt. The platform's tables (`prices_daily`, `instruments`) are read by every path and are not checked."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "backfill", "live", "streams", "embedder", "prometheus")
WRITES = re.compile(
    r"\b(?:INSERT INTO|UPDATE|DELETE FROM|TRUNCATE(?: TABLE)?|LOCK TABLE)\s+(?:ONLY\s+)?([a-z_][a-z_0-9]*)"
)
FROM = re.compile(r"\bFROM\b")
TABLE = re.compile(r"\s+([a-z_][a-z_0-9]*)")

PLATFORM_TABLES = {"prices_daily", "instruments"}  # the platform's: read by every path, not checked

OWNERS: dict[str, set[str]] = {
    # one writer; its values read by embedding_reads, which keys exist (embedded or absent) by maintained_keys
    "numeric_window_embeddings": {
        "shared/store/embedding_store.py",
        "shared/store/embedding_reads.py",
        "shared/store/maintained_keys.py",
    },
    "numeric_window_embedding_versions": {"shared/store/embedding_history.py"},
    "embedder_absent_embeddings": {"shared/store/embedding_store.py", "shared/store/maintained_keys.py"},
    "prices_outbox": {"shared/store/outbox.py"},
    "embedder_outbox_changes": {"shared/store/outbox.py"},
    "embedder_recompute_queue": {"shared/store/maintained_keys.py"},
    "embedder_tick_commits": {"shared/store/tick_commits.py"},
    "embedder_bootstrap": {"live/bootstrap.py"},
    "embedder_scheduled_ticks": {"shared/store/scheduled_ticks.py"},
    "embedder_live_layout": {"shared/store/live_layout.py"},
    "embedder_capture": {"live/capture.py"},
    "embedder_state_format": {"live/bootstrap.py"},
    "embedder_parity_audits": {"live/parity_audit.py"},
    "embedder_parity_sweep": {"live/parity_audit.py"},
    "embedder_write_refusals": {"shared/store/embedding_store.py"},
    "embedder_relay_round": {"shared/store/write_claims.py"},
    "embedder_runs": {"shared/store/tick_commits.py"},
    "embedder_history": {"shared/store/embedding_history.py"},
}


def subject(sql: str) -> str | None:
    """The table a statement is about: the one it writes, else the first it reads."""
    written = WRITES.search(sql)
    if written:
        return written.group(1)
    first = FROM.search(sql)  # only the first FROM: a placeholder there (an f-string's table) names none
    read = TABLE.match(sql, first.end()) if first else None
    return read.group(1) if read else None


def statements(path: Path) -> list[tuple[int, str]]:
    """(line, table) of every string literal in `path` that is a statement on a table (an f-string as a
    whole, its placeholders left out)."""
    tree = ast.parse(path.read_text())
    parts_of_fstrings = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = " ".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts_of_fstrings:
            text = node.value
        else:
            continue
        table = subject(text)
        if table:
            found.append((node.lineno, table))
    return found


def violations() -> list[str]:
    """'module:line: a statement on T (its owner: ...)' for each statement outside its table's owner."""
    out = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            module = path.relative_to(REPO).as_posix()
            if "/migrations/" in module:
                continue
            for line, table in statements(path):
                owners = OWNERS.get(table)
                if owners and module not in owners:
                    out.append(f"{module}:{line}: a statement on {table} (its owner: {', '.join(sorted(owners))})")
    return out


def test_a_statement_on_a_table_lives_in_its_owner():
    assert violations() == []


def test_the_check_sees_sql_outside_an_owner(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text(
        'Q = "SELECT trade_date FROM embedder_tick_commits WHERE run_id = %s"\n'
        'W = """UPDATE prices_outbox SET published_at = now()\n  FROM embedder_live_layout"""\n'
        'P = "the prices_outbox from which entries go"\n'
        'F = f"SELECT x FROM {TABLE} JOIN embedder_bootstrap b USING (i) WHERE {COND} AND y IN (SELECT y FROM z)"\n'
        'G = f"WITH s AS (SELECT i FROM instruments WHERE {C}) SELECT d FROM prices_outbox JOIN s USING (i)"\n'
    )
    assert statements(stray) == [(1, "embedder_tick_commits"), (2, "prices_outbox"), (6, "instruments")]


def test_every_table_the_migrations_create_has_an_owner():
    made = set()
    for path in (REPO / "shared" / "store" / "migrations").glob("*.sql"):
        made |= set(re.findall(r"CREATE (?:OR REPLACE )?(?:TABLE|VIEW) (?:IF NOT EXISTS )?([a-z_]+)", path.read_text()))
    assert sorted(made - set(OWNERS) - PLATFORM_TABLES) == []
