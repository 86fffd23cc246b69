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

from shared.contract.config import Settings
from shared.contract.errors import EmbedderError

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
_settings: Settings | None = None


def capture_refusals(settings: Settings | None = None, show: bool = False) -> None:
    """Keep the Kafka clients' errors (for `refusal`); in a command (`show` False) they are never printed, the
    command says what failed in its own words. `settings`: the connection to probe when a bootstrap fails."""
    global _settings
    _settings = settings or _settings
    logger = logging.getLogger("kafka")
    logger.setLevel(logging.NOTSET if show else logging.ERROR)
    logger.propagate = show
    if REFUSALS not in logger.handlers:
        logger.addHandler(REFUSALS)


def probe(settings: Settings) -> str | None:
    """Where a secured broker's bootstrap failed without saying why (the client logs the SASL refusal only when
    it reads the broker's answer before the connection closes): connect and do the TLS handshake ourselves. A
    broker that completes it is up, so the SASL login is what failed. None: no secured protocol, or the
    broker does not answer at all (down, paused: worth retrying)."""
    import socket
    import ssl

    from shared.broker.kafka_config import ssl_context

    protocol = settings.kafka_security_protocol
    if not protocol.startswith("SASL") and protocol != "SSL":
        return None
    server = settings.kafka_bootstrap_servers.split(",")[0].strip()
    host, _, port = server.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=3.0)
    except (OSError, ValueError):
        return None
    try:
        context = ssl_context(settings)
        if context is not None:
            try:
                sock = context.wrap_socket(sock, server_hostname=host)
            except ssl.SSLCertVerificationError:
                return SIGNS["CERTIFICATE_VERIFY_FAILED"]
            except (OSError, ssl.SSLError):
                return None
    finally:
        sock.close()
    if protocol.startswith("SASL"):
        return (
            f"Kafka at {server} refused the credentials (it answers, the TLS handshake is done, the SASL login "
            "fails): check EMBEDDER_KAFKA_SASL_USERNAME, EMBEDDER_KAFKA_SASL_PASSWORD and EMBEDDER_KAFKA_SASL_MECHANISM"
        )
    return None


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
    if meaning is None and _settings is not None and "bootstrap" in str(error).lower():
        meaning = probe(_settings)
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
