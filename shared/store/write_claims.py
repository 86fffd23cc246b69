"""What a write of embeddings was computed from: its *claim*, so that an older computation never wins.

A claim is a position in the relay's publication order: "every captured price change that the relay
published at or before this position is in the prices this write was computed from". Positions are
`round << INDEX_BITS | index`: the relay numbers its rounds in PostgreSQL (`embedder_relay_round`, in
the transaction that queues the round's changes, before it reads their rows), and each message it
publishes in a round gets the next index. So:

- a stream write claims the stamp of the message it was computed at: a tick's (every window of the
  partition has applied every message before it), a correction's row batch (its rows and all before);
- a write computed from `prices_daily` (the batch path, the correction path, `verify --repair`, a
  replay's rows, a query's look-back) reads the round *first*, then the prices: `database_claim(round)`,
  the last position of that round (each change of the round committed before the round was numbered).

The store keeps the claim beside the row (`computed_from`) and refuses, in the upsert itself, a write
whose claim is lower than the stored one (`shared.store.embedding_store`). Claiming less than one read is
always safe (such a write may lose to one that saw as much); claiming more never happens by
construction. Every captured change is published in a later round with a higher claim, and reaches the
stored keys through the stream or the correction path, so the newest computation is always the last
word. A claim of None (a writer that predates this, or plain SQL) ranks below every claim.
"""

from __future__ import annotations

import psycopg

from shared.store.db import one

INDEX_BITS = 20
LAST_INDEX = (1 << INDEX_BITS) - 1


def stamp(round_: int, index: int) -> int:
    """The claim of the `index`-th message the relay publishes in round `round_`."""
    return (round_ << INDEX_BITS) | min(index, LAST_INDEX)


def database_claim(round_: int) -> int:
    """The claim of prices read from `prices_daily` after reading relay round `round_`: every message of
    that round (and of every earlier one)."""
    return stamp(round_, LAST_INDEX)


def round_of(claim: int) -> int:
    return claim >> INDEX_BITS


def relay_round(conn: psycopg.Connection) -> int:
    """The relay's newest numbered round (0 before any)."""
    row = conn.execute("SELECT round FROM embedder_relay_round").fetchone()
    return int(row[0]) if row else 0


def read_claim(conn: psycopg.Connection) -> int:
    """The claim of whatever this connection reads from `prices_daily` from now on (read it first)."""
    return database_claim(relay_round(conn))


def next_round(conn: psycopg.Connection) -> int:
    """Number the relay's next round (in the caller's transaction: commit it before reading rows)."""
    return int(one(conn.execute("UPDATE embedder_relay_round SET round = round + 1 RETURNING round"))[0])


def describe(claim: int | None) -> str:
    """A claim for people: `round 12 #3`, `round 12 (prices_daily)`, or `unknown`."""
    if claim is None:
        return "unknown"
    index = claim & LAST_INDEX
    return f"round {round_of(claim)} " + ("(prices_daily)" if index == LAST_INDEX else f"#{index}")
