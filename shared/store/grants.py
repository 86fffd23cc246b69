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

from shared.store.db import one

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
        from shared.contract.errors import EmbedderError

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


@dataclass(frozen=True)
class Grant:
    """One GRANT statement, and how to ask the catalog whether its role holds what it grants."""

    privileges: tuple[str, ...]
    kind: str  # DATABASE, SCHEMA, TABLE, SEQUENCE or FUNCTION
    target: str  # as quoted in SQL
    role: str  # as quoted in SQL
    role_name: str  # as stored in the catalog
    checked_as: str  # the object as the catalog's has_*_privilege function takes it

    def sql(self) -> str:
        on = self.target if self.kind == "TABLE" else f"{self.kind} {self.target}"
        return f"GRANT {', '.join(self.privileges)} ON {on} TO {self.role};"

    def held(self, conn: psycopg.Connection) -> bool:
        """Whether the role already holds every privilege (directly, through PUBLIC or a role it is in)."""
        check = f"has_{self.kind.lower()}_privilege"
        return all(
            one(conn.execute(f"SELECT {check}(%s, %s, %s)".encode(), (self.role_name, self.checked_as, p)))[0]
            for p in self.privileges
        )


def grants(conn: psycopg.Connection, service_role: str, reader_role: str | None = None) -> list[Grant]:
    """Every GRANT the service role (and the reader role, if given) needs on this database's installed schema
    (names quoted as PostgreSQL quotes identifiers)."""
    schema = schema_of(conn)
    database = conn.info.dbname

    def q(*parts: str) -> str:
        """Names as PostgreSQL quotes them (only where needed: `quote_ident`)."""
        return ".".join(str(one(conn.execute("SELECT quote_ident(%s)", (p,)))[0]) for p in parts)

    def granting(role_name: str):
        role = q(role_name)

        def grant(kind: str, privileges: str, target: str, checked_as: str | None = None) -> Grant:
            names = tuple(p.strip() for p in privileges.split(","))
            return Grant(names, kind, target, role, role_name, checked_as or target)

        return grant

    service = granting(service_role)
    out = [
        service("DATABASE", "CONNECT, TEMPORARY", q(database), database),
        service("SCHEMA", "USAGE", q(schema), schema),
        *(service("TABLE", "SELECT", q(schema, t)) for t in PLATFORM_READS),
        service("TABLE", "SELECT, INSERT, UPDATE, DELETE", q(schema, EMBEDDINGS)),
    ]
    for rel in own_relations(conn, schema):
        target = q(schema, rel.name)
        if rel.kind == "S":
            out.append(service("SEQUENCE", "USAGE, SELECT, UPDATE", target))
        elif rel.kind == "v":
            out.append(service("TABLE", "SELECT", target))
        else:
            out.append(service("TABLE", "SELECT, INSERT, UPDATE, DELETE", target))
    out.extend(service("FUNCTION", "EXECUTE", f"{q(schema)}.{fn}") for fn in own_functions(conn, schema))
    if reader_role:
        reader = granting(reader_role)
        out += [
            reader("DATABASE", "CONNECT", q(database), database),
            reader("SCHEMA", "USAGE", q(schema), schema),
            *(reader("TABLE", "SELECT", q(schema, t)) for t in READER_TABLES),
        ]
    return out


def apply_grants(conn: psycopg.Connection, planned: list[Grant]) -> None:
    """Run the grants in one transaction (the caller commits). PostgreSQL only warns when the granting role may
    not grant a privilege (the database or schema belongs to someone else): that is fine when the role holds it
    already (PUBLIC's CONNECT and TEMPORARY on a database, by default), and an error naming the statement if not,
    rather than a service role that fails later."""
    from shared.contract.errors import EmbedderError

    skipped: list[str] = []

    def note(diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.sqlstate == "01007":  # warning_privilege_not_granted
            skipped.append(diagnostic.message_primary or "")

    conn.add_notice_handler(note)
    try:
        for grant in planned:
            skipped.clear()
            conn.execute(grant.sql().encode())  # text the catalog quoted (no parameters)
            if skipped and not grant.held(conn):
                raise EmbedderError(
                    f"{grant.sql()} granted nothing ({skipped[0]}): have the object's owner (or a role holding "
                    "the privilege WITH GRANT OPTION) run it, then run this again"
                )
    finally:
        conn.remove_notice_handler(note)
