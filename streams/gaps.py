"""Watching for offsets the consumer skips: a prices event lost between Kafka and the agent is reported.

faust-streaming 0.15.3 lost fetched messages around restarts and rebalances (flow-control resume
cleared queues of the current generation; uncommitted partitions were never sought back); the
cause is patched in `streams/faust_fixes.py`. This guard stays as the alarm should anything else
skip offsets: the prices topic is neither compacted nor transactional, so any forward jump in the
offsets the agent applies is a loss. It logs an error and counts `embedder_offset_gaps_total`;
replays also fail loudly on it (their ticks carry row counts).
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
        log.error(
            "%s[%s]: offsets %s..%s were skipped by the consumer (a faust-streaming bug during "
            "rebalances); their rows are missing from the windows",
            self.topic,
            partition,
            want,
            offset - 1,
        )
        return offset - want

    def applied(self, partition: int, offset: int) -> None:
        self.expected[partition] = offset + 1
