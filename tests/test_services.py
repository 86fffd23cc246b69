"""`embedder services`: the local broker and database answer, and `up` is idempotent."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from embedder.services.local import LocalServices
from shared.config import LOCAL_DATABASE_URL, LOCAL_KAFKA_BOOTSTRAP
from tests.conftest import REPO


@pytest.fixture
def local_services(endpoints) -> LocalServices:
    services = LocalServices.under(REPO / ".services")
    if endpoints != {**endpoints, **services.env()} or not services.kafka.running_pid():
        pytest.skip("tests are using services this project did not start")
    return services


def test_up_is_idempotent_and_prints_settings(local_services):
    env = {**os.environ, "EMBEDDER_SERVICES_DIR": str(REPO / ".services")}
    proc = subprocess.run([sys.executable, "-m", "embedder.cli", "services", "up"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "already running" in proc.stderr
    assert f"export KAFKA_BOOTSTRAP_SERVERS={LOCAL_KAFKA_BOOTSTRAP}" in proc.stdout
    assert f"export DATABASE_URL={LOCAL_DATABASE_URL}" in proc.stdout


def test_status_reports_both_running(local_services):
    assert local_services.kafka.status().startswith("running")
    assert local_services.postgres.status().startswith("running")
    assert local_services.kafka.config.read_text().count("process.roles=broker,controller") == 1
