"""docker-compose.yml (for users with Docker) names both services, their ports and healthchecks."""

from __future__ import annotations

from pathlib import Path

import yaml

from shared.contract.config import LOCAL_KAFKA_PORT, LOCAL_POSTGRES_PORT

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def test_compose_services_ports_and_healthchecks():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    kafka, pg = services["kafka"], services["postgres"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "broker,controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert f"{LOCAL_KAFKA_PORT}:{LOCAL_KAFKA_PORT}" in kafka["ports"]
    assert f"{LOCAL_POSTGRES_PORT}:5432" in pg["ports"]
    assert pg["image"].startswith("postgres:")
    for svc in (kafka, pg):
        check = svc["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and check["retries"] > 0
    depends = services["migrate"]["depends_on"]
    assert depends == {"postgres": {"condition": "service_healthy"}, "kafka": {"condition": "service_healthy"}}
