"""The deployment files, tested where no container engine runs: they parse, and everything they name
exists — commands and options (parsed by the real CLI), environment variables (validated by the real
settings), probe paths (answered by the real web server), volumes, grace periods, selectors."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import typer
import yaml

from embedder.cli import app
from shared.contract.config import Settings

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "kubernetes"
ALIASES = {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"}


def env_name(field: str) -> str:
    return {"database_url": "DATABASE_URL", "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS"}.get(
        field, f"EMBEDDER_{field.upper()}"
    )


KNOWN_ENV = {env_name(f) for f in Settings.model_fields} | {"PYTHONUNBUFFERED", "PATH"}


def assert_settings(env: dict[str, str]) -> Settings:
    """Every variable is a setting, and the values validate (as the worker would read them)."""
    unknown = set(env) - KNOWN_ENV
    assert not unknown, f"not settings: {sorted(unknown)}"
    values = {}
    for field in Settings.model_fields:
        if env_name(field) in env:
            values[field] = env[env_name(field)]
            if field == "tick_schedule":
                values[field] = json.loads(env[env_name(field)])
    return Settings(_env_file=None, **values)


def assert_cli(args: list[str]) -> None:
    """The command and its options exist (parsed by the CLI itself, nothing is run)."""
    command = typer.main.get_command(app)
    args = list(args)
    assert args and args[0] == "embedder", args
    args = args[1:]
    path = []
    while hasattr(command, "commands") and args and args[0] in command.commands:
        path.append(args[0])
        command = command.commands[args.pop(0)]
    assert not hasattr(command, "commands"), f"not a command: {path}"
    command.make_context(" ".join(["embedder", *path]), args)  # raises on an unknown option


def dockerfile() -> dict:
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD\s+(\[.*\])", text, re.M).group(1))
    env = dict(
        re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"^ENV\s+((?:.*\\\n)*.*)", text, re.M)).replace("\\", ""))
    )
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    return {"text": text, "stages": stages, "command": entrypoint + cmd, "env": env, "user": user}


def manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def test_the_image_runs_the_worker_as_a_non_root_user_from_the_lock_file():
    d = dockerfile()
    assert len(d["stages"]) == 2  # build stage, runtime stage
    assert "pip install --no-cache-dir -r requirements.lock" in d["text"]
    assert d["user"] and d["user"][-1].split(":")[0] not in ("0", "root")
    assert d["command"] == ["embedder", "worker"]
    assert_cli(d["command"])
    settings = assert_settings({k: v for k, v in d["env"].items() if k.startswith(("EMBEDDER_", "DATABASE", "KAFKA"))})
    assert settings.web_host == "0.0.0.0" and str(settings.state_dir) == "/var/lib/embedder/state"
    # The console script the image runs is the one the tests start as `python -m embedder.cli worker`.
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"embedder": "embedder.cli:main"}
    runtime = [line.split("==")[0] for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line]
    assert "faust-streaming" in runtime and "pytest" not in runtime  # the image carries no test tools


def test_compose_runs_the_migration_then_the_worker_with_state_on_a_volume():
    spec = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services, volumes = spec["services"], spec["volumes"]
    worker, migrate = services["worker"], services["migrate"]
    assert worker["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "kafka": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    settings = assert_settings(worker["environment"])
    assert settings.web_host == "0.0.0.0"
    volume, mount = worker["volumes"][0].split(":")
    assert volume in volumes and mount == str(settings.state_dir)
    assert "/readyz" in " ".join(worker["healthcheck"]["test"]) and worker["healthcheck"]["retries"] > 0
    assert int(worker["stop_grace_period"].rstrip("s")) > settings.stop_grace_seconds
    assert "command" not in worker  # the image's default: embedder worker
    assert_cli(["embedder", *migrate["command"]])
    assert_settings(migrate["environment"])
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_the_kubernetes_manifests_parse_and_name_what_exists():
    docs = manifests()
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert all((K8S / r).exists() for r in kustomization["resources"])
    config = docs["ConfigMap"]["data"]
    settings = assert_settings(config)
    for secret in ("DATABASE_URL", "EMBEDDER_KAFKA_SASL_PASSWORD"):  # the Secret's keys (docs/operations.md)
        assert secret in KNOWN_ENV
    sts = docs["StatefulSet"]["spec"]
    pod = sts["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["worker"]  # with the image's entrypoint `embedder`
    assert_cli(["embedder", *container["args"]])
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] > settings.stop_grace_seconds
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[sts["volumeClaimTemplates"][0]["metadata"]["name"]] == str(settings.state_dir)
    assert container["ports"][0]["containerPort"] == settings.web_port
    assert 1 <= sts["replicas"] <= settings.partitions
    labels = sts["template"]["metadata"]["labels"]
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    job = docs["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["db", "upgrade"]
    assert_cli(["embedder", *job["args"]])
    cron = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    shell = cron["command"][-1]
    tick = shlex.split(re.sub(r"\$\(.*?\)", "2026-11-24", shell.removeprefix("exec ")))
    assert_cli(tick)


def test_the_probes_the_manifests_name_answer(tmp_path):
    from prometheus_client import CollectorRegistry

    from shared.metrics import StreamMetrics
    from streams.web import WorkerStatus, serve

    settings = Settings(_env_file=None, database_url="postgresql://x:y@127.0.0.1:1/none")
    server = serve(settings, CollectorRegistry(), StreamMetrics.create(CollectorRegistry()), WorkerStatus(), 5.0, 0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert urllib.request.urlopen(base + "/livez", timeout=5).status == 200
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(base + "/readyz", timeout=10)
        assert not_ready.value.code == 503  # the path exists; this worker holds nothing yet
    finally:
        server.shutdown()
