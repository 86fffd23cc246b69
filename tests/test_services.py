"""`embedder services`: the local broker and database answer, and `up` is idempotent."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from embedder.services.local import LocalServices
from shared.contract.config import LOCAL_DATABASE_URL, LOCAL_KAFKA_BOOTSTRAP
from tests.conftest import REPO
from tests.support.cli import EMBEDDER, run_command


@pytest.fixture
def local_services(endpoints) -> LocalServices:
    services = LocalServices.under(REPO / ".services")
    if endpoints != {**endpoints, **services.env()} or not services.kafka.running_pid():
        pytest.skip("tests are using services this project did not start")
    return services


def test_up_is_idempotent_and_prints_settings(local_services):
    env = {**os.environ, "EMBEDDER_SERVICES_DIR": str(REPO / ".services")}
    proc = run_command(EMBEDDER + ["services", "up"], env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "already running" in proc.stderr
    assert f"export KAFKA_BOOTSTRAP_SERVERS={LOCAL_KAFKA_BOOTSTRAP}" in proc.stdout
    assert f"export DATABASE_URL={LOCAL_DATABASE_URL}" in proc.stdout


def test_status_reports_both_running(local_services):
    assert local_services.kafka.status().startswith("running")
    assert local_services.postgres.status().startswith("running")
    assert local_services.kafka.config.read_text().count("process.roles=broker,controller") == 1


def test_a_broker_start_waits_for_the_data_directory_lock_of_a_stopping_broker(tmp_path):
    """Right after a stop the old broker can still hold its data directory: a start waits for it."""
    from embedder.services.kafka import LocalKafka

    kafka = LocalKafka(tmp_path)
    kafka.data_dir.mkdir()
    lock_file = kafka.data_dir / ".lock"
    lock_file.touch()
    holder = subprocess.Popen(  # another process holds the lock the way the broker does (fcntl), for 2 s
        [
            sys.executable,
            "-c",
            "import fcntl,sys,time; h=open(sys.argv[1],'a'); fcntl.lockf(h, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(2)",
            str(lock_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        held_at = time.monotonic()
        with pytest.raises(Exception, match="to be unlocked"):
            kafka._wait_data_dir_unlocked(0.5)
        kafka._wait_data_dir_unlocked(30.0)  # returns once the holder lets go (about 2 s after it took it)
        assert time.monotonic() - held_at >= 1.5
    finally:
        holder.kill()
        holder.wait()


def test_a_broker_that_exits_while_starting_is_explained_by_its_own_fatal_lines(tmp_path):
    from embedder.services.kafka import fatal_lines

    log = tmp_path / "kafka.log"
    log.write_text("[t0] INFO old run (kafka)\n[t0] ERROR an old error (kafka)\n")
    since = log.stat().st_size
    with open(log, "a") as out:
        out.write(
            "[t1] INFO starting (kafka)\n"
            "[t1] ERROR [BrokerServer id=1] Fatal error during broker startup. (kafka.server.BrokerServer)\n"
            "org.apache.kafka.common.KafkaException: Failed to acquire lock on file .lock\n"
            "[t1] INFO shutting down (kafka)\n"
        )
    text = fatal_lines(log, since)
    assert "Failed to acquire lock" in text and "Fatal error during broker startup" in text
    assert "old error" not in text
