"""The consumer group's Burrow-style status: one list, in order of severity, for the lag report, its metrics,
the exit codes and the CLI's colours."""

from __future__ import annotations

from enum import StrEnum


class LagStatus(StrEnum):
    """Least to most severe (a group's status is its worst partition's)."""

    OK = "OK"
    WARN = "WARN"  # lag grew over every sample of the window
    REWIND = "REWIND"  # the committed offset moved backwards (offsets reset, topic recreated)
    STALL = "STALL"  # members, but the committed offset did not move while there is lag
    STOP = "STOP"  # lag and no member consuming
    ERR = "ERR"  # the group could not be read


def worst(statuses: list[LagStatus]) -> LagStatus:
    order = list(LagStatus)
    return max(statuses, key=order.index, default=LagStatus.OK)
