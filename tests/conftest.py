"""Fixtures that find real services: environment, else testcontainers, else local services.

Order (DEVELOPERS.md): KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL from the
environment; else testcontainers where a Docker engine answers; else the
project's own local Kafka and PostgreSQL (`embedder services up`).
Each test session works in a fresh database of its own on that server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from shared.store.migrate import upgrade

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "sp500_2015_2020_yahoo.csv.gz"


SERVICE_FIXTURES = frozenset(
    {
        "endpoints",
        "database_factory",
        "session_db",
        "db_url",
        "real_db_url",
        "cli_env",
        "kafka_bootstrap",
        "local_services",
        "kafka_cluster",
    }
)
"""A test that uses one of these reaches the real broker or database: it is marked `services`, and
`make test-unit` (`-m "not services"`) leaves it out."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


def _docker_engine_answers() -> bool:
    try:
        import docker  # installed with testcontainers

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def endpoints() -> Iterator[dict[str, str]]:
    """{'DATABASE_URL': ..., 'KAFKA_BOOTSTRAP_SERVERS': ...} of real running services."""
    found = {k: os.environ[k] for k in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS") if os.environ.get(k)}
    if len(found) == 2:
        yield found
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as pg, KafkaContainer().with_kraft() as kafka:
            yield {
                "DATABASE_URL": found.get("DATABASE_URL", pg.get_connection_url()),
                "KAFKA_BOOTSTRAP_SERVERS": found.get("KAFKA_BOOTSTRAP_SERVERS", kafka.get_bootstrap_server()),
            }
        return
    from embedder.services.local import LocalServices

    services = LocalServices.under(REPO / ".services")
    started_pg = services.postgres.up()
    started_kafka = services.kafka.up()
    try:
        yield {**services.env(), **found}
    finally:
        if started_kafka:
            services.kafka.down()
        if started_pg:
            services.postgres.down()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def database_factory(endpoints) -> Iterator:
    """Makes fresh, migrated databases on the test server; drops them at the end."""
    server = endpoints["DATABASE_URL"]
    made: list[str] = []

    def make(prefix: str = "embedder_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return _with_database(server, name)

    yield make
    with psycopg.connect(server, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def session_db(database_factory) -> str:
    url = database_factory()
    upgrade(url)
    return url


@pytest.fixture
def db_url(session_db) -> str:
    """A migrated database with empty tables for this test."""
    with psycopg.connect(session_db) as conn:
        conn.execute("""TRUNCATE numeric_window_embeddings, prices_daily, instruments, prices_outbox,
                        embedder_tick_commits, embedder_runs, embedder_bootstrap, embedder_scheduled_ticks,
                        embedder_absent_embeddings, embedder_recompute_queue, embedder_parity_audits,
                        embedder_state_format, numeric_window_embedding_versions, embedder_write_refusals
                        RESTART IDENTITY""")
        conn.execute("UPDATE embedder_history SET enabled = true, complete_since = now()")
        conn.execute("UPDATE embedder_relay_round SET round = 0")
        conn.execute(
            "UPDATE embedder_parity_sweep SET entity_id = NULL, as_of_date = NULL, model_id = NULL, passes = 0"
        )
        # A database whose live service is enabled (capture on); tests of a batch-only database turn it off.
        conn.execute("""UPDATE embedder_capture SET enabled = true, idle_hours = 72, relay_seen_at = now(),
                        changed_at = now(), changed_by = 'tests'""")
    return session_db


@pytest.fixture(scope="session")
def real_db_url(database_factory) -> str:
    """A migrated database holding the shared real S&P 500 data set (imported once)."""
    if not REAL_DATA.exists():
        pytest.skip(f"real data set not present at {REAL_DATA}")
    from backfill.price_import import import_prices

    url = database_factory("embedder_real")
    upgrade(url)
    result = import_prices(url, [REAL_DATA])
    assert result.inserted > 0
    return url


@pytest.fixture
def cli_env(db_url, endpoints) -> dict[str, str]:
    """Environment for running the commands as subprocesses against this test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDDER_")}
    env.update(endpoints)
    env["DATABASE_URL"] = db_url
    env["COLUMNS"] = "200"
    tag = uuid.uuid4().hex[:8]  # unique topics and consumer group: tests never share stream state
    env.update(
        {
            "EMBEDDER_APP_ID": f"embedder-test-{tag}",
            "EMBEDDER_PRICES_TOPIC": f"test-{tag}.prices",
            "EMBEDDER_DEAD_LETTER_TOPIC": f"test-{tag}.dead-letter",
            "EMBEDDER_PARTITIONS": "4",
            "EMBEDDER_WEB_PORT": "0",  # each worker picks a free port (written to <data-dir>/web.port)
        }
    )
    return env


@pytest.fixture
def roles(database_factory):
    """A platform database with its roles (tests/support/roles.py): owner, ingestion, service, reader, legacy."""
    from tests.support.roles import platform_roles

    with platform_roles(database_factory) as made:
        yield made


@pytest.fixture
def kafka_bootstrap(endpoints) -> str:
    return endpoints["KAFKA_BOOTSTRAP_SERVERS"]


@pytest.fixture
def local_services(endpoints):
    """The project's own local services when the tests run on them (so a test may restart the
    broker); None when the services came from the environment or testcontainers."""
    from embedder.services.local import LocalServices

    services = LocalServices.under(REPO / ".services")
    if endpoints["KAFKA_BOOTSTRAP_SERVERS"] != services.env()["KAFKA_BOOTSTRAP_SERVERS"]:
        return None
    return services


@pytest.fixture(scope="session")
def kafka_cluster(endpoints):
    """A real 3-node KRaft cluster (replication 3, min.insync.replicas 2) from the project's broker jars, on
    ports of its own beside the single broker, for tests that kill brokers; stopped at the end."""
    from embedder.services.kafka_cluster import LocalKafkaCluster

    cluster = LocalKafkaCluster(REPO / ".services" / "kafka-cluster-test", base_port=29292)
    cluster.up()
    try:
        yield cluster
    finally:
        cluster.down(graceful=False)  # its data is the tests' own, and tests kill -9 brokers anyway


@pytest.fixture
def cluster_env(cli_env, kafka_cluster) -> dict[str, str]:
    """`cli_env` on the 3-node cluster, with production replication for the topics the project creates."""
    for node in kafka_cluster.nodes:
        if not node.running_pid():
            kafka_cluster.start(node.node_id)
    return cli_env | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_cluster.bootstrap,
        "EMBEDDER_TOPIC_REPLICATION_FACTOR": "3",
        "EMBEDDER_TOPIC_MIN_INSYNC_REPLICAS": "2",
    }
