"""Watching for offsets faust skips: a prices event lost between Kafka and the agent is reported.

faust-streaming 0.15.3 can drop messages it has already fetched while a rebalance or the
startup recovery suspends the flow (`Consumer._drain_messages` waits on `callback(message)` *or*
`suspend_flow`, then marks the offset read either way); the next message then arrives with a
jump, which faust records as a "gap" (meant for compacted topics) and counts as acknowledged.
Seen in this project's tests: a worker started while a replay's messages were already waiting
skipped 90+ messages per partition. A seek back from the agent did not bring them back (faust
keeps them marked read), so this only reports it: an error in the log and
`embedder_offset_gaps_total`. The prices topic is neither compacted nor transactional, so any
forward jump is such a loss. Replays also fail loudly on it (their ticks carry row counts), and
workers are only given messages once they are ready (`worker_for_run`, the live relay).
"""
from __future__ import annotations

import logging


log = logging.getLogger("embedder.gaps")


class OffsetGuard:
    """Next expected offset per partition of one topic, for the events this process applies."""

    def __init__(self, topic: str):
        self.topic = topic
        self.expected: dict[int, int] = {}

    def forget(self) -> None:
        """After a rebalance positions legitimately move (another worker may have advanced them)."""
        self.expected.clear()

    def skipped(self, partition: int, offset: int) -> int:
        """How many offsets before this event never reached the agent (0 normally)."""
        want = self.expected.get(partition)
        if want is None or offset <= want:
            return 0
        log.error("%s[%s]: offsets %s..%s were skipped by the consumer (a faust-streaming bug during "
                  "rebalances); their rows are missing from the windows", self.topic, partition, want, offset - 1)
        return offset - want

    def applied(self, partition: int, offset: int) -> None:
        self.expected[partition] = offset + 1
