"""Alert rules, dashboard and a real Prometheus server against a real worker and broker."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import urllib.request
from datetime import date
from pathlib import Path

import pytest
import yaml

from shared.broker.topics import ensure_topics
from tests.support.cli import EMBEDDER, settings_of
from tests.support.helpers import wait_for
from tests.support.markets import publish_backlog
from tests.support.workers import get, stop
from tests.support.workers import start_web_worker as start_worker

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "embedder-alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "embedder-dashboard.json"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian's prometheus package; .ci/run installs it)")
    return path


def test_the_alert_rules_pass_promtool_check_and_their_unit_tests():
    promtool = tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 13 rules found" in check.stdout, check.stdout + check.stderr
    tests = subprocess.run(
        [promtool, "test", "rules", "embedder-alerts.test.yml"], cwd=RULES.parent, capture_output=True, text=True
    )
    assert tests.returncode == 0 and "SUCCESS" in tests.stdout, tests.stdout + tests.stderr


def queried_metrics() -> set[str]:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    return {m for e in exprs for m in re.findall(r"\b((?:embedder|process)_[a-z_]+)", e)}


def exported(text: str) -> set[str]:
    names = set(re.findall(r"^# HELP (\S+)", text, re.M))
    return names | {n + suffix for n in names for suffix in ("_bucket", "_count", "_sum")}


def test_every_metric_the_dashboard_and_the_alerts_query_is_exported(cli_env, tmp_path):
    ensure_topics(settings_of(cli_env))
    worker, base = start_worker(cli_env | {"EMBEDDER_LAG_SAMPLE_SECONDS": "1"}, tmp_path, capture=True)
    exporter = subprocess.Popen(
        EMBEDDER + ["lag", "--serve", "0", "--interval", "1"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: get(base + "/readyz")[0] == 200, 90, "readiness")
        port = re.search(r":(\d+)/metrics", exporter.stderr.readline()).group(1)
        wait_for(
            lambda: "embedder_lag_status{" in get(f"http://127.0.0.1:{port}/metrics")[1].decode(),
            30,
            "the exporter's first sample",
        )
        wait_for(
            lambda: re.search(r"^embedder_ready 1\.0$", get(base + "/metrics")[1].decode(), re.M),
            30,
            "the readiness gauge",
        )
        worker_metrics = get(base + "/metrics")[1].decode()
        names = exported(worker_metrics) | exported(get(f"http://127.0.0.1:{port}/metrics")[1].decode())
        wanted = queried_metrics()
        assert len(wanted) >= 15 and not wanted - names, sorted(wanted - names)
        assert "process_resident_memory_bytes" in worker_metrics
        # No label whose values grow without bound: every label set of the worker is small and fixed.
        labels = {(m, k) for m, k in re.findall(r"^(embedder_\w+)\{(\w+)=", worker_metrics, re.M)}
        assert {k for _, k in labels} <= {
            "kind",
            "outcome",
            "run",
            "topic",
            "partition",
            "group",
            "status",
            "market",
            "le",
            "cause",
        }
        assert set(re.findall(r'^embedder_embeddings_revised_today\{cause="(\w+)"\}', worker_metrics, re.M)) == {
            "live",
            "correction",
            "replay",
            "query",
            "direct",
            "repair",
            "sql",
            "other",
        }
    finally:
        exporter.send_signal(signal.SIGINT)
        exporter.wait(timeout=30)
        stop(worker)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_prometheus_fires_alerts_when_the_worker_stops_with_lag_outstanding(cli_env, tmp_path):
    prometheus = tool("prometheus")
    settings = settings_of(cli_env)
    ensure_topics(settings)
    worker, base = start_worker(cli_env | {"EMBEDDER_LAG_SAMPLE_SECONDS": "1"}, tmp_path)
    lag_port = free_port()
    exporter = subprocess.Popen(
        EMBEDDER + ["lag", "--serve", str(lag_port), "--interval", "1", "--window", "5"],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # The shipped rules, with their `for:` durations cut to seconds so the test need not wait minutes.
    rules = tmp_path / "rules.yml"
    rules.write_text(re.sub(r"for: \d+m", "for: 3s", RULES.read_text()))
    worker_port = int(base.rsplit(":", 1)[1])
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [
                    {"job_name": "embedder-worker", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
                    {"job_name": "embedder-lag", "static_configs": [{"targets": [f"127.0.0.1:{lag_port}"]}]},
                ],
            }
        )
    )
    web = free_port()
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=open(tmp_path / "prometheus.log", "wb"),
        stderr=subprocess.STDOUT,
    )

    def alerts() -> dict[str, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/alerts", timeout=5) as r:
                return {a["labels"]["alertname"]: a["state"] for a in json.load(r)["data"]["alerts"]}
        except OSError:
            return {}

    def up(job: str) -> float | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{web}/api/v1/query?query=up%7Bjob%3D%22{job}%22%7D", timeout=5
            ) as r:
                result = json.load(r)["data"]["result"]
            return float(result[0]["value"][1]) if result else None
        except OSError:
            return None

    try:
        wait_for(lambda: get(base + "/readyz")[0] == 200, 90, "the worker to be ready")
        wait_for(lambda: up("embedder-worker") == 1 and up("embedder-lag") == 1, 60, "Prometheus scraping both")
        assert "EmbedderConsumerStopped" not in alerts() and "EmbedderWorkerDown" not in alerts()
        stop(worker)  # a graceful stop: it leaves the group
        publish_backlog(settings, 3, date(2020, 4, 6))  # prices that nobody consumes
        wait_for(lambda: alerts().get("EmbedderConsumerStopped") == "firing", 90, "EmbedderConsumerStopped to fire")
        wait_for(lambda: alerts().get("EmbedderWorkerDown") == "firing", 60, "EmbedderWorkerDown to fire")
    finally:
        server.terminate()
        server.wait(timeout=30)
        exporter.send_signal(signal.SIGINT)
        exporter.wait(timeout=30)
        stop(worker)
