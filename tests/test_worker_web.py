"""The worker's web port: Prometheus metrics, liveness and readiness (with Postgres really unreachable),
and the lag page rendered by a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.broker.publisher import PricePublisher
from shared.broker.topics import ensure_topics
from shared.contract.messages import LIVE_RUN, PriceRow
from tests.support.cli import EMBEDDER, run_command, settings_of
from tests.support.helpers import load_synthetic, wait_for
from tests.support.tcp_proxy import TcpProxy
from tests.support.workers import get, stop
from tests.support.workers import start_web_worker as start_worker


@pytest.mark.slow
def test_metrics_liveness_and_readiness_when_postgres_is_unreachable(db_url, cli_env, tmp_path):
    load_synthetic(db_url, tmp_path, instruments=6)
    parts = urlsplit(db_url)
    proxy = TcpProxy(parts.hostname, parts.port)  # the worker reaches Postgres only through this
    proxied = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"))
    env = cli_env | {"DATABASE_URL": proxied, "EMBEDDER_LAG_SAMPLE_SECONDS": "1"}
    worker, base = start_worker(env, tmp_path)
    try:
        assert get(base + "/livez")[0] == 200
        wait_for(lambda: get(base + "/readyz")[0] == 200, 90, "readiness")
        replay = run_command(
            EMBEDDER
            + [
                "replay",
                "--from",
                "2019-06-03",
                "--to",
                "2019-06-28",
                "--market-id",
                "US_EQ",
                "--model-id",
                "numeric-simple-v1",
            ],
            env,
            timeout=300,
        )
        assert replay.returncode == 0, replay.stderr[-2000:]
        committed = int(re.search(r"embeddings committed: ([\d,]+)", replay.stdout).group(1).replace(",", ""))
        assert committed > 50

        def families() -> dict:
            return {f.name: f for f in text_string_to_metric_families(get(base + "/metrics")[1].decode())}

        wait_for(
            lambda: (
                "embedder_consumer_lag_messages" in families()
                and families()["embedder_sink_embeddings_committed"].samples[0].value >= committed
            ),
            30,
            "the sink's counters and the lag gauges",
        )
        f = families()
        value = {
            name: sum(s.value for s in f[name].samples if s.name == f"{name}_total")
            for name in (
                "embedder_rows",
                "embedder_embeddings_emitted",
                "embedder_dead_letters",
                "embedder_sink_embeddings_committed",
            )
        }
        assert value["embedder_rows"] > 100 and value["embedder_dead_letters"] == 0
        assert value["embedder_embeddings_emitted"] >= committed
        assert {s.labels["kind"] for s in f["embedder_events"].samples} >= {"rows", "tick", "end"}
        for histogram in ("embedder_sink_batch_embeddings", "embedder_sink_commit_seconds"):
            count = [s.value for s in f[histogram].samples if s.name == f"{histogram}_count"]
            assert f[histogram].type == "histogram" and count and count[0] > 0
        runs = {s.labels["run"] for s in f["embedder_last_committed_as_of_timestamp_seconds"].samples}
        assert runs == {"replay"}  # bounded label values: "live" or "replay", never one per run id
        assert f["embedder_db_last_upsert_timestamp_seconds"].samples[0].value > 0
        lag_labels = {(s.labels["topic"], s.labels["partition"]) for s in f["embedder_consumer_lag_messages"].samples}
        assert lag_labels == {(env["EMBEDDER_PRICES_TOPIC"], str(p)) for p in range(int(env["EMBEDDER_PARTITIONS"]))}
        assert "embedder_consumer_lag_seconds" in f and "embedder_assigned_partitions" in f
        assert all(
            not s.name.startswith("embedder_") or "instrument" not in s.labels
            for fam in f.values()
            for s in fam.samples
        )

        proxy.cut()  # Postgres unreachable from the worker
        wait_for(lambda: get(base + "/readyz")[0] == 503, 30, "/readyz to fail")
        checks = json.loads(get(base + "/readyz")[1])
        assert checks["postgres"] != "ok" and checks["ready"] is False
        assert get(base + "/livez")[0] == 200  # alive, just not ready
        proxy.restore()
        wait_for(lambda: get(base + "/readyz")[0] == 200, 30, "/readyz to recover")
    finally:
        stop(worker)
        proxy.close()


@pytest.mark.slow
def test_a_stop_that_outlasts_its_grace_period_exits_anyway(cli_env, tmp_path):
    """A graceful stop is bounded: past EMBEDDER_STOP_GRACE_SECONDS the worker exits 1 and says why."""
    worker, base = start_worker(cli_env | {"EMBEDDER_STOP_GRACE_SECONDS": "0.05"}, tmp_path)
    try:
        wait_for(lambda: get(base + "/readyz")[0] == 200, 90, "the worker to be ready")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 1  # faust's own stop takes longer than 50 ms
    finally:
        if worker.poll() is None:
            worker.kill()
    assert "graceful stop did not finish within 0s" in (tmp_path / "w.log").read_text(errors="replace")


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing (CI installs it from Debian's packages)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return path


def render(url: str, profile: Path) -> str:
    """The page's DOM after its script ran, from a real headless Chromium."""
    proc = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=4000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def page_rows(dom: str) -> dict[tuple[str, int], int]:
    rows = re.findall(r'<tr class="\w+" data-topic="([^"]+)" data-partition="(\d+)" data-lag="(\d+)"', dom)
    return {(t, int(p)): int(lag) for t, p, lag in rows}


@pytest.mark.slow
def test_lag_page_shows_the_backlog_then_zero_in_headless_chromium(cli_env, tmp_path):
    chromium()  # skip early where there is no browser
    settings = settings_of(cli_env)
    ensure_topics(settings)
    env = cli_env | {"EMBEDDER_LAG_SAMPLE_SECONDS": "1"}
    worker, base = start_worker(env, tmp_path)
    try:
        wait_for(lambda: get(base + "/readyz")[0] == 200, 90, "readiness")
        with psycopg.connect(cli_env["DATABASE_URL"]) as conn:  # known instruments, so the rows are used
            conn.execute("""INSERT INTO instruments (instrument_id, asset_class, symbol, currency)
                            SELECT 'PAGE' || lpad(k::text, 3, '0'), 'EQUITY', 'P' || k, 'USD'
                            FROM generate_series(0, 499) k""")
        publisher = PricePublisher(settings)  # a backlog of single live rows: one event each
        for k in range(5_000):  # ~15 s of backlog for a loaded 2-core machine: the page shows it, then zero
            publisher.row(
                PriceRow(
                    run=LIVE_RUN, i=f"PAGE{k % 500:03d}", d=date(2020, 1, 2) + timedelta(days=k // 500), c=10.0, vol=1.0
                )
            )
        publisher.flush()
        publisher.close()
        expected = {(settings.prices_topic, p) for p in range(settings.partitions)}
        seen: dict = {}

        def shows(predicate) -> bool:
            seen["dom"] = render(base + "/lag", tmp_path / "profile")
            rows = page_rows(seen["dom"])
            return set(rows) == expected and predicate(rows)

        wait_for(lambda: shows(lambda rows: sum(rows.values()) > 0), 60, "the page to show a backlog")
        assert 'id="group-status"' in seen["dom"] and "<polyline" in seen["dom"]  # status badge, trend chart
        wait_for(lambda: shows(lambda rows: sum(rows.values()) == 0), 300, "the page to show zero lag")
        assert 'class="badge OK"' in seen["dom"]
    finally:
        stop(worker)
