"""Kafka settings reach kafka-python and faust/aiokafka identically (same broker, protocol, SASL, TLS)."""

from __future__ import annotations

import ssl

import faust

from shared.broker.kafka_config import faust_broker_options, kafka_python_config, topic_configs
from shared.contract.config import Settings


def settings(**kw) -> Settings:
    return Settings(_env_file=None, kafka_bootstrap_servers="k1:9093, k2:9093", **kw)


def test_plaintext_by_default():
    s = settings()
    assert kafka_python_config(s) == {
        "bootstrap_servers": "k1:9093, k2:9093",
        "security_protocol": "PLAINTEXT",
        "bootstrap_timeout_ms": 10_000,  # a broker that is down is said in seconds, not after 30
    }
    options = faust_broker_options(s)
    assert options == {"broker": "kafka://k1:9093;k2:9093"}


def test_sasl_credentials_are_the_same_for_both_clients():
    s = settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="embedder",
        kafka_sasl_password="s3cret",
    )
    py = kafka_python_config(s)
    assert (py["security_protocol"], py["sasl_mechanism"], py["sasl_plain_username"], py["sasl_plain_password"]) == (
        "SASL_PLAINTEXT",
        "SCRAM-SHA-512",
        "embedder",
        "s3cret",
    )
    creds = faust_broker_options(s)["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value, creds.protocol.value) == (
        "embedder",
        "s3cret",
        "SCRAM-SHA-512",
        "SASL_PLAINTEXT",
    )
    assert "s3cret" not in repr(s)  # the password is a secret in the settings too


def test_tls_files_reach_both_clients(tmp_path):
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=embedder-test",
        ],
        check=True,
        capture_output=True,
    )
    s = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="u",
        kafka_sasl_password="p",
        kafka_ssl_cafile=str(cert),
        kafka_ssl_certfile=str(cert),
        kafka_ssl_keyfile=str(key),
    )
    py = kafka_python_config(s)
    assert (py["ssl_cafile"], py["ssl_certfile"], py["ssl_keyfile"]) == (str(cert), str(cert), str(key))
    creds = faust_broker_options(s)["broker_credentials"]
    assert creds.protocol.value == "SASL_SSL" and isinstance(creds.ssl_context, ssl.SSLContext)
    assert any(c.get("subject") == ((("commonName", "embedder-test"),),) for c in creds.ssl_context.get_ca_certs())


def test_topic_configs_carry_min_insync_replicas_and_retention():
    s = settings(topic_min_insync_replicas=2)
    assert topic_configs(s, 168) == {"min.insync.replicas": "2", "retention.ms": str(168 * 3600 * 1000)}
    assert topic_configs(settings()) == {}


def test_topics_are_created_with_their_retention_on_the_broker(kafka_bootstrap):
    import uuid

    from kafka.admin import ConfigResource, ConfigResourceType

    from shared.broker.topics import REPLAY_WINDOWS, admin_client, changelog_topic, ensure_topics

    tag = uuid.uuid4().hex[:8]
    s = Settings(
        _env_file=None,
        kafka_bootstrap_servers=kafka_bootstrap,
        app_id=f"cfg-{tag}",
        prices_topic=f"cfg-{tag}.prices",
        dead_letter_topic=f"cfg-{tag}.dead",
        prices_retention_hours=5,
        topic_min_insync_replicas=1,
    )
    ensure_topics(s)
    admin = admin_client(s)
    try:
        names = [s.prices_topic, s.dead_letter_topic, changelog_topic(s, REPLAY_WINDOWS)]
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])["topic"]
        configs = {name: {key: entry["value"] for key, entry in entries.items()} for name, entries in found.items()}
    finally:
        admin.close()
    assert configs[s.prices_topic]["retention.ms"] == str(5 * 3600 * 1000)
    assert configs[s.dead_letter_topic]["retention.ms"] == str(720 * 3600 * 1000)
    assert configs[changelog_topic(s, REPLAY_WINDOWS)]["cleanup.policy"] == "compact"
    assert configs[s.prices_topic]["min.insync.replicas"] == "1"
