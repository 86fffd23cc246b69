"""Riding out a broker loss: a Kafka call retried with bounded backoff, logged once per state change.

A broker restart is routine (rolling upgrades, a node lost): while the other brokers hold the in-sync
replicas, a client request that went to the dead one must go again (kafka-python picks another node on
the next attempt, once its metadata drops the dead one). Retries back off from 0.2 s to 5 s and stop at
a deadline; the log says once that Kafka is failing and once that it answers again, not a line per
attempt. A broker that has just started answers group requests with "coordinator not available" until its
offsets topic exists: that is its normal start, said in those words at info level, not as a failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from kafka.errors import CoordinatorNotAvailableError, KafkaError

from shared.broker.kafka_refusals import raise_if_refused

T = TypeVar("T")
log = logging.getLogger("embedder.kafka")

RETRIABLE = (KafkaError, OSError, TimeoutError)


def with_retries(
    what: str,
    call: Callable[[], T],
    deadline_seconds: float = 90.0,
    first_delay: float = 0.2,
    max_delay: float = 5.0,
    final: tuple[type[BaseException], ...] = (),
) -> T:
    """`call()`, again after a Kafka or network error until `deadline_seconds` have passed (the last
    error is raised then); errors of the `final` types are raised at once (an answer, not a lost broker)."""
    deadline = time.monotonic() + deadline_seconds
    delay = first_delay
    failing_since: float | None = None
    starting = False  # the first error was a new broker's normal start
    attempts = 0
    while True:
        attempts += 1
        attempt_began = time.monotonic()
        try:
            result = call()
        except final:
            raise
        except RETRIABLE as e:
            raise_if_refused(e, what)  # the broker refused us: an answer, not a lost broker
            now = time.monotonic()
            if failing_since is None:
                failing_since = attempt_began  # a client's connect can itself take seconds
                starting = isinstance(e, CoordinatorNotAvailableError)
                if starting:
                    log.info(
                        "%s: Kafka's group coordinator is starting (normal for a new broker); waiting up to %.0f s",
                        what,
                        deadline_seconds,
                    )
                else:
                    log.warning(
                        "%s: Kafka did not answer (%s); retrying for up to %.0f s",
                        what,
                        _first_line(e),
                        deadline_seconds,
                    )
            if now + delay > deadline:
                log.error(
                    "%s: Kafka did not answer for %.0f s (%d attempts): %s",
                    what,
                    now - failing_since,
                    attempts,
                    _first_line(e),
                )
                raise
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
            continue
        if failing_since is not None:
            log.log(
                logging.INFO if starting else logging.WARNING,
                "%s: Kafka answers again after %.1f s (%d attempts)",
                what,
                time.monotonic() - failing_since,
                attempts,
            )
        return result


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]
