"""What a secured broker refused, said in one line: wrong credentials, a certificate not trusted, a missing ACL.

kafka-python does not raise an authentication failure: it logs it on its connection and goes on trying
until its bootstrap times out ("Unable to bootstrap"), which reads like a broker that is down. So the
commands keep the Kafka clients' error records (never printed: `capture_refusals`), and a Kafka call that
fails asks `refusal()` first: if the broker refused us, that is the error — at once, not after 90 s of
retries — as `KafkaRefused`, one line naming what was refused and the setting to look at.
"""

from __future__ import annotations

import logging
import threading

from shared.errors import EmbedderError

SIGNS = {
    "SaslAuthenticationFailed": "Kafka refused the credentials (authentication failed): check "
    "EMBEDDER_KAFKA_SASL_USERNAME, EMBEDDER_KAFKA_SASL_PASSWORD and EMBEDDER_KAFKA_SASL_MECHANISM",
    "CERTIFICATE_VERIFY_FAILED": "Kafka's TLS certificate is not trusted: check EMBEDDER_KAFKA_SSL_CAFILE",
    "UnsupportedSaslMechanism": "Kafka does not offer this SASL mechanism: check EMBEDDER_KAFKA_SASL_MECHANISM",
}


class KafkaRefused(EmbedderError):
    """The broker refused this client: credentials, TLS trust or an ACL. Not retried: it is an answer."""


class _Refusals(logging.Handler):
    """Keeps the first refusal the Kafka clients logged (thread-safe; cleared by `forget`)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._lock = threading.Lock()
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.first is not None:
            return
        try:
            text = record.getMessage()
        except Exception:  # a client's malformed log call must not break ours
            return
        for sign, meaning in SIGNS.items():
            if sign in text:
                with self._lock:
                    self.first = self.first or meaning
                return


REFUSALS = _Refusals()


def capture_refusals() -> None:
    """In a command: the Kafka clients' errors are kept (for `refusal`), never printed (the command says
    what failed in its own words)."""
    logger = logging.getLogger("kafka")
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    if REFUSALS not in logger.handlers:
        logger.addHandler(REFUSALS)


def refusal() -> str | None:
    """What the broker refused since the process started (None: nothing)."""
    return REFUSALS.first


def raise_if_refused(error: BaseException | None = None, what: str = "") -> None:
    """Raise `KafkaRefused` when the broker refused this client: `error` is an authorization error (a missing
    ACL), or the clients logged a refusal (credentials, TLS). Call it where a Kafka call failed."""
    from kafka.errors import AuthorizationError

    if isinstance(error, AuthorizationError):
        raise KafkaRefused(
            f"{what + ': ' if what else ''}Kafka says this user is not authorized ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); the ACLs it needs: ALL on topics, "
            "groups and transactional ids under its prefix (docs/operations.md, Security)"
        ) from None
    meaning = refusal()
    if meaning:
        raise KafkaRefused(meaning) from None


def topic_partitions(consumer, topic: str, config: dict) -> set[int]:
    """`consumer.partitions_for_topic(topic)`; where it finds none, the broker is asked about that topic by name
    (kafka-python lists the topics this user may see, so a topic it may not describe looks like one that does
    not exist): an authorization error then raises. `config`: the client's kafka-python configuration."""
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAuthorizationFailedError

    partitions = consumer.partitions_for_topic(topic)
    if partitions:
        return set(partitions)
    admin = KafkaAdminClient(**config)
    try:
        described = admin.describe_topics([topic])
    finally:
        admin.close()
    if any(t.get("error_code") == TopicAuthorizationFailedError.errno for t in described):
        raise TopicAuthorizationFailedError(f"topic {topic}")
    return set()
