"""Least privilege, written down: the exact GRANT statements the embedder's roles need on the installed schema.

Three roles (docs/operations.md, "Security"):
- the owner, who runs `embedder db upgrade` (creates the tables and triggers, so it owns them; the triggers
  run with its privileges: migration 0014);
- the service role the worker and every command run as: reads the platform's `instruments` and
  `prices_daily`, writes the embeddings and the embedder's own tables, views and sequences; no DDL at run
  time (it makes temporary staging tables: TEMPORARY on the database);
- a read-only consumer role for `read_embeddings` and `embedder embeddings export|history`, reads as known
  at an instant included.

What the embedder owns is read from the catalog, not from a list kept by hand: every table, view and
sequence of the schema named `embedder_*`, `prices_outbox*` or `numeric_window_embedding_versions*`, and the
embedder's functions, so a table a later migration adds is granted too.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from shared.db import one

PLATFORM_READS = ("instruments", "prices_daily")
EMBEDDINGS = "numeric_window_embeddings"
READER_TABLES = (EMBEDDINGS, "numeric_window_embedding_versions", "embedder_history", "instruments")
OWN_PATTERNS = ("embedder\\_%", "prices\\_outbox%", "numeric\\_window\\_embedding\\_versions%")


@dataclass(frozen=True)
class Relation:
    name: str
    kind: str  # r table, v view, S sequence


def schema_of(conn: psycopg.Connection) -> str:
    """The schema the embedder's tables are in: the first of the connection's search_path that has
    `numeric_window_embeddings` (the platform's tables may live outside `public`)."""
    row = conn.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
        (EMBEDDINGS,),
    ).fetchone()
    if row is None:
        from shared.errors import EmbedderError

        raise EmbedderError(f"no {EMBEDDINGS} on this connection's search_path: run `embedder db upgrade` first")
    return str(row[0])


def own_relations(conn: psycopg.Connection, schema: str) -> list[Relation]:
    """The embedder's tables, views and sequences in `schema` (and the embeddings table's sequence)."""
    rows = conn.execute(
        """SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'S')
             AND (c.relname LIKE ANY(%s) OR c.oid = pg_get_serial_sequence(%s, 'embedding_id')::regclass)
           ORDER BY c.relkind, c.relname""",
        (schema, list(OWN_PATTERNS), f"{schema}.{EMBEDDINGS}"),
    ).fetchall()
    return [Relation(name, "r" if kind == "p" else kind) for name, kind in rows]


def own_functions(conn: psycopg.Connection, schema: str) -> list[str]:
    """The embedder's callable functions (not its trigger functions), as `name(args)`."""
    rows = conn.execute(
        """SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = %s AND p.proname LIKE 'embedder\\_%%' AND p.prorettype <> 'trigger'::regtype
           ORDER BY 1""",
        (schema,),
    ).fetchall()
    return [r[0] for r in rows]


def grant_statements(conn: psycopg.Connection, service_role: str, reader_role: str | None = None) -> list[str]:
    """Every GRANT the service role (and the reader role, if given) needs on this database's installed schema,
    as SQL text (quoted as PostgreSQL quotes identifiers)."""
    schema = schema_of(conn)
    database = conn.info.dbname

    def q(*parts: str) -> str:
        """Names as PostgreSQL quotes them (only where needed: `quote_ident`)."""
        return ".".join(str(one(conn.execute("SELECT quote_ident(%s)", (p,)))[0]) for p in parts)

    service = q(service_role)
    out = [
        f"GRANT CONNECT, TEMPORARY ON DATABASE {q(database)} TO {service};",
        f"GRANT USAGE ON SCHEMA {q(schema)} TO {service};",
        *(f"GRANT SELECT ON {q(schema, t)} TO {service};" for t in PLATFORM_READS),
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {q(schema, EMBEDDINGS)} TO {service};",
    ]
    for rel in own_relations(conn, schema):
        target = q(schema, rel.name)
        if rel.kind == "S":
            out.append(f"GRANT USAGE, SELECT, UPDATE ON SEQUENCE {target} TO {service};")
        elif rel.kind == "v":
            out.append(f"GRANT SELECT ON {target} TO {service};")
        else:
            out.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {target} TO {service};")
    out.extend(f"GRANT EXECUTE ON FUNCTION {q(schema)}.{fn} TO {service};" for fn in own_functions(conn, schema))
    if reader_role:
        reader = q(reader_role)
        out += [
            f"GRANT CONNECT ON DATABASE {q(database)} TO {reader};",
            f"GRANT USAGE ON SCHEMA {q(schema)} TO {reader};",
            *(f"GRANT SELECT ON {q(schema, t)} TO {reader};" for t in READER_TABLES),
        ]
    return out


def apply_grants(conn: psycopg.Connection, statements: list[str]) -> None:
    """Run `statements` in one transaction (the caller commits)."""
    for statement in statements:
        conn.execute(statement.encode())  # text the catalog and sql.Identifier made (no parameters)
