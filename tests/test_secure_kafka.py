"""The embedder on a broker that requires SASL_SSL (SCRAM-SHA-256, TLS with a CA made on the spot) and ACLs:
`allow.everyone.if.no.acl.found=false`, and only the documented ACLs for the embedder's user — ALL on topics,
groups and transactional ids under its prefix (docs/operations.md, "Security") — and on a platform database as its
service role, granted what `embedder db grants` prints (tests/support/roles.py). The worker, a one-shot
replay with its own worker, `lag` (table, `--json`, `--serve`), `status`, `dead-letters`, `verify` and the
platform command work and equal the reference; a wrong password and a missing ACL each give one clear line
(exit 1), never a traceback or a hang; no secret appears in any log line or error.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import psycopg
import pytest

from tests.conftest import REPO
from tests.support.cli import EMBEDDER, PLATFORM, run_command
from tests.support.helpers import assert_same_embeddings, expected, load_synthetic, stored, wait_for
from tests.support.roles import as_role
from tests.support.workers import live_tick_committed, start_named_worker, stop

PREFIX = "embsec-"
MODEL = "num-regime-core-v1"


@pytest.fixture(scope="session")
def secure_kafka(endpoints):
    from embedder.services.kafka_secure import SecureLocalKafka

    broker = SecureLocalKafka(REPO / ".services" / "kafka-secure-test", libs_root=REPO / ".services" / "kafka")
    broker.up()
    broker.allow_prefix(PREFIX)
    try:
        yield broker
    finally:
        broker.down(graceful=False)  # the tests' own broker: nothing to keep


@pytest.fixture
def secure_env(cli_env, secure_kafka, roles) -> dict[str, str]:
    """The embedder on the secured broker as its Kafka user, and on a platform database as its service role
    (granted what `embedder db grants` prints)."""
    roles.granted()
    tag = uuid.uuid4().hex[:8]
    names = {
        "DATABASE_URL": as_role(roles.admin, roles.service),
        "ADMIN_DATABASE_URL": roles.admin,
        "EMBEDDER_APP_ID": f"{PREFIX}{tag}",
        "EMBEDDER_PRICES_TOPIC": f"{PREFIX}{tag}.prices",
        "EMBEDDER_DEAD_LETTER_TOPIC": f"{PREFIX}{tag}.dead-letter",
    }
    return cli_env | secure_kafka.env() | names


def run(env: dict[str, str], *args: str, code: int = 0, command=EMBEDDER) -> subprocess.CompletedProcess:
    done = run_command(command + list(args), env, timeout=300)
    assert done.returncode == code, (args, done.returncode, done.stderr[-2000:])
    return done


def test_every_command_and_the_worker_on_a_secured_broker(secure_env, secure_kafka, tmp_path):
    env, url = secure_env, secure_env["ADMIN_DATABASE_URL"]  # the platform's own view, for loading and checking
    load_synthetic(url, tmp_path, instruments=10, start=date(2019, 1, 1), end=date(2019, 12, 31))
    with psycopg.connect(url) as conn:
        days = [r[0] for r in conn.execute("SELECT DISTINCT trade_date FROM prices_daily ORDER BY 1 DESC LIMIT 2")]
        ids = [r[0] for r in conn.execute("SELECT instrument_id FROM instruments ORDER BY 1")]
    june = ["--from", "2019-06-03", "--to", "2019-06-28", "--market-id", "US_EQ", "--model-id", MODEL]
    outputs = [run(env, "replay", *june)]  # through Kafka, with the worker it starts
    worker = start_named_worker(env, tmp_path, "w", capture=True)
    try:
        wait_for(lambda: (tmp_path / "w" / "web.port").exists(), 120, "the worker")
        for day in sorted(days):
            outputs.append(run(env, "tick", "--as-of", day.isoformat(), "--model-id", MODEL))
            wait_for(lambda d=day: live_tick_committed(url, d, 4), 180, f"the live tick of {day}")
        platform = ["--as-of", days[0].isoformat(), "--market-id", "US_EQ", "--model-id", MODEL]
        outputs.append(run(env, *platform, command=PLATFORM))
        status = run(env, "status", "--json")
        assert json.loads(status.stdout)["dead_letters"]["error"] is None  # it read the dead-letter topic
        outputs += [
            status,
            run(env, "dead-letters", "--json", "--since", "1d"),
            run(env, "lag"),
            run(env, "lag", "--json"),
            run(env, "verify", *june),
        ]
        serve = subprocess.Popen(
            EMBEDDER + ["lag", "--serve", "0", "--interval", "1"], env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            first = serve.stderr.readline() if serve.stderr else ""
            port = first.split("http://127.0.0.1:")[1].split("/")[0]
            time.sleep(2)
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            assert f'group="{env["EMBEDDER_APP_ID"]}"' in body
        finally:
            serve.terminate()
            serve.wait(timeout=30)
    finally:
        stop(worker)
    june_days = [d for d in _trade_days(url) if date(2019, 6, 3) <= d <= date(2019, 6, 28)]
    assert_same_embeddings(stored(url), expected(url, ids, june_days + days, 63, [MODEL]), url)
    logs = [p.read_text(errors="replace") for p in tmp_path.rglob("*.log")]
    everything = "\n".join(logs + [o.stdout + o.stderr for o in outputs])
    assert secure_kafka.password not in everything and secure_kafka.admin_password not in everything


def test_a_wrong_password_and_a_missing_acl_are_one_clear_line(secure_env, secure_kafka):
    wrong = secure_env | {"EMBEDDER_KAFKA_SASL_PASSWORD": "not-the-password"}
    with ThreadPoolExecutor(2) as pool:  # each waits out its bootstrap (10 s) before it can tell: side by side
        denied_run, lag_run = pool.submit(run, wrong, "dead-letters", code=1), pool.submit(run, wrong, "lag", code=1)
        denied, lag = denied_run.result(), lag_run.result()
    assert "refused the credentials" in denied.stderr and len(denied.stderr.strip().splitlines()) == 1
    assert "not-the-password" not in denied.stderr and "Traceback" not in denied.stderr
    assert "refused the credentials" in lag.stdout.splitlines()[0]  # its report names it
    outside = secure_env | {
        "EMBEDDER_DEAD_LETTER_TOPIC": "outside-the-prefix.dead-letter",
        "EMBEDDER_APP_ID": "outside",
    }
    refused = run(outside, "dead-letters", code=1)
    assert "not authorized" in refused.stderr and "outside-the-prefix.dead-letter" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    lag = run(outside, "lag", code=1)
    assert "not authorized" in lag.stdout.splitlines()[0]
    assert secure_kafka.password not in refused.stderr + lag.stdout


def _trade_days(url: str) -> list[date]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT DISTINCT trade_date FROM prices_daily ORDER BY 1")]
