"""The live service's layout, recorded in PostgreSQL: how many partitions its prices topic and its state
have, and which generation of them runs.

A Faust table has the partition count of its source topic, and an instrument's partition is its key's
hash modulo that count: changing the count moves almost every instrument to another partition, whose
state (its window) another partition holds. So a repartition never changes a running layout; it starts a
new generation: a prices topic `<topic>.g<n>` with the new count, state tables `…_g<n>` (new changelogs),
and windows reloaded from prices_daily (the database is the record). `embedder live repartition N`
writes the new layout; workers read it when they start and restart on it when it changes
(`streams.layout_watch`); commands that publish or measure the prices topic read it too.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import psycopg

from shared.contract.config import Settings
from shared.store.db import one

log = logging.getLogger("embedder.layout")
GENERATION_SUFFIX = re.compile(r"\.g\d+$")


@dataclass(frozen=True)
class LiveLayout:
    partitions: int
    generation: int


def read_layout(conn: psycopg.Connection, app_id: str) -> LiveLayout | None:
    row = conn.execute(
        "SELECT partitions, generation FROM embedder_live_layout WHERE app_id = %s", (app_id,)
    ).fetchone()
    return LiveLayout(*row) if row else None


def record_layout(conn: psycopg.Connection, app_id: str, partitions: int) -> LiveLayout:
    """The recorded layout; where none is, `partitions` becomes generation 0 (the settings' layout)."""
    conn.execute(
        """INSERT INTO embedder_live_layout (app_id, partitions, generation, changed_by)
                    VALUES (%s, %s, 0, 'first start') ON CONFLICT (app_id) DO NOTHING""",
        (app_id, partitions),
    )
    layout = read_layout(conn, app_id)
    assert layout is not None
    return layout


def lock_layout(conn: psycopg.Connection, app_id: str) -> LiveLayout:
    """The app's layout, row-locked until the transaction ends (a repartition changes it under the lock)."""
    partitions, generation = one(
        conn.execute("SELECT partitions, generation FROM embedder_live_layout WHERE app_id = %s FOR UPDATE", (app_id,))
    )
    return LiveLayout(partitions, generation)


def change_layout(conn: psycopg.Connection, app_id: str, layout: LiveLayout, by: str) -> None:
    """Make `layout` the app's live layout (`by`: who changed it)."""
    conn.execute(
        """UPDATE embedder_live_layout SET partitions = %s, generation = %s, changed_at = now(),
                    changed_by = %s WHERE app_id = %s""",
        (layout.partitions, layout.generation, by, app_id),
    )


def with_layout(settings: Settings, layout: LiveLayout) -> Settings:
    """`settings` on `layout`: its partition count, its generation, its prices topic."""
    base = GENERATION_SUFFIX.sub("", settings.prices_topic)
    topic = f"{base}.g{layout.generation}" if layout.generation else base
    if (settings.partitions, settings.live_generation, settings.prices_topic) == (
        layout.partitions,
        layout.generation,
        topic,
    ):
        return settings
    return settings.model_copy(
        update={"partitions": layout.partitions, "live_generation": layout.generation, "prices_topic": topic}
    )


def resolve(settings: Settings, conn: psycopg.Connection | None = None) -> Settings:
    """`settings` on the layout the database records (recording the settings' own where none is). Says so
    once when EMBEDDER_PARTITIONS differs from the recorded count (after a repartition)."""
    if conn is None:
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=10) as own:
            return resolve(settings, own)
    layout = record_layout(conn, settings.app_id, settings.partitions)
    resolved = with_layout(settings, layout)
    if layout.partitions != settings.partitions and not settings.live_generation:
        log.info(
            "the live service runs %d partitions (layout generation %d, `embedder live repartition`); "
            "EMBEDDER_PARTITIONS=%d is not used",
            layout.partitions,
            layout.generation,
            settings.partitions,
        )
    return resolved


def resolve_if_reachable(settings: Settings) -> Settings:
    """`resolve`, for commands that publish to or measure the prices topic: a database that does not answer
    (or predates the layout) leaves the settings as they are, and the command reports what it cannot reach."""
    try:
        return resolve(settings)
    except psycopg.Error:
        return settings
