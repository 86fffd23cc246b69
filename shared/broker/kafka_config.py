"""One place that turns the Kafka settings into client configuration, for kafka-python (replays, the
relay, admin, lag, dead letters) and for faust/aiokafka (the worker): the same broker, security
protocol, SASL credentials and TLS files reach both."""

from __future__ import annotations

import ssl
from typing import Any

from shared.contract.config import Settings


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments every kafka-python client gets (KafkaProducer, KafkaConsumer, KafkaAdminClient)."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        # kafka-python's clients connect in their constructor and keep trying until a bootstrap deadline of
        # 30 s: a broker that is down (or a refused login) would hold every command that long before it could
        # say so. 10 s, and an outage is retried by the caller (shared.broker.kafka_retry) within its own deadline.
        "bootstrap_timeout_ms": 10_000,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = secret(settings)
    if settings.kafka_security_protocol.endswith("SSL"):
        config.update(
            {
                key: value
                for key, value in (
                    ("ssl_cafile", settings.kafka_ssl_cafile),
                    ("ssl_certfile", settings.kafka_ssl_certfile),
                    ("ssl_keyfile", settings.kafka_ssl_keyfile),
                )
                if value
            }
        )
    return config


def secret(settings: Settings) -> str | None:
    return settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the SSL protocols (the same files kafka-python is given), else None."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    return context


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """faust.App keyword arguments for the same connection: broker URL and credentials."""
    import faust

    options: dict[str, Any] = {
        "broker": "kafka://" + ";".join(s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip())
    }
    protocol = settings.kafka_security_protocol
    if protocol.startswith("SASL"):
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=secret(settings),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context(settings),
        )
    elif protocol == "SSL":
        options["broker_credentials"] = faust.SSLCredentials(ssl_context(settings))
    return options


def topic_configs(settings: Settings, retention_hours: float | None = None) -> dict[str, str]:
    """Configs of a topic the project creates: min.insync.replicas and retention, when set."""
    configs: dict[str, str] = {}
    if settings.topic_min_insync_replicas:
        configs["min.insync.replicas"] = str(settings.topic_min_insync_replicas)
    if retention_hours:
        configs["retention.ms"] = str(int(retention_hours * 3600 * 1000))
    return configs
