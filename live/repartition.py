"""`embedder live repartition N`: move the live service to N partitions, with no tick lost.

The new layout is a new generation (`shared.store.live_layout`): its prices topic and changelogs are created
here first (so a broker problem is an error before anything changes), then one transaction records it
and puts back in the outbox the live ticks the old layout has not committed on every partition (their
commits are forgotten: the new layout computes them whole). Workers see the new generation within
`LAYOUT_WATCH_SECONDS`, stop gracefully and start again on it (the same process); the first one
reloads the live windows from prices_daily and moves the waiting ticks behind those loads
(`live.bootstrap.reconcile_state_format`). The relay of the old layout stops marking entries
published the moment the layout changes, so whatever it was sending is sent again on the new topic.

Ticks wait, and are not lost, from the command until the windows are reloaded: the watch interval, a
graceful stop and a start, and the bootstrap of the market (docs/operations.md → Repartitioning).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.broker.topics import ensure_topics
from shared.contract.config import Settings
from shared.contract.errors import BadArguments
from shared.store.db import connection
from shared.store.live_layout import LiveLayout, change_layout, lock_layout, record_layout, with_layout
from shared.store.outbox import requeue_live_ticks
from shared.store.tick_commits import forget_live_ticks

log = logging.getLogger("embedder.repartition")
MAX_PARTITIONS = 1024
REQUEUE_DAYS = 7
"""Live ticks published this recently and not committed on every partition are put back in the outbox."""


@dataclass(frozen=True)
class Repartitioned:
    before: LiveLayout
    after: LiveLayout
    prices_topic: str
    requeued_ticks: int


def repartition(settings: Settings, partitions: int, by: str) -> Repartitioned:
    """Record layout `partitions` as the next generation (see the module); unchanged when it is the
    current count."""
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise BadArguments(f"the partition count must be between 1 and {MAX_PARTITIONS}, not {partitions}")
    with connection(settings.database_url) as conn:
        before = record_layout(conn, settings.app_id, settings.partitions)
        conn.commit()
        if before.partitions == partitions:
            return Repartitioned(before, before, with_layout(settings, before).prices_topic, 0)
        after = LiveLayout(partitions, before.generation + 1)
        target = with_layout(settings, after)
        ensure_topics(target)
        with conn.transaction():
            if lock_layout(conn, settings.app_id) != before:
                raise BadArguments("the live layout changed meanwhile (another repartition?); run the command again")
            change_layout(conn, settings.app_id, after, by)
            requeued = requeue_live_ticks(conn, REQUEUE_DAYS, before.partitions)
            if requeued:
                forget_live_ticks(conn, requeued)
    log.warning(
        "live layout of %r: %d partitions (generation %d) -> %d partitions (generation %d), prices topic %s; "
        "%d live tick(s) put back in the outbox",
        settings.app_id,
        before.partitions,
        before.generation,
        partitions,
        after.generation,
        target.prices_topic,
        len(requeued),
    )
    return Repartitioned(before, after, target.prices_topic, len(requeued))
