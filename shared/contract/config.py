"""Frozen settings from the environment (and `.env`), loaded in one place."""

from __future__ import annotations

import json
import re
from datetime import time
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.contract.errors import BadArguments
from shared.contract.models import validate_models


class BadSettings(BadArguments):
    """A setting from the environment (or .env) is invalid: nothing was done."""


LOCAL_POSTGRES_PORT = 55432
# Below Linux's ephemeral range (32768-60999): a client retrying a stopped broker on a port inside
# it can connect to itself on that very port and keep the restarted broker from binding it (seen in CI).
LOCAL_KAFKA_PORT = 29092
LOCAL_DATABASE_URL = f"postgresql://embedder:embedder@127.0.0.1:{LOCAL_POSTGRES_PORT}/embedder"
LOCAL_KAFKA_BOOTSTRAP = f"127.0.0.1:{LOCAL_KAFKA_PORT}"


class MarketSchedule(BaseModel):
    """When the live service ticks a market's day by itself (see live/schedule.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    market_id: str = Field(min_length=1, max_length=50)
    deadline: time | None = None
    """Local time ("18:30") at which day D is ticked with whatever has arrived; None: only when complete."""
    timezone: str = "UTC"
    """IANA timezone of the deadline, e.g. America/New_York."""
    when_complete: bool = True
    """Tick as soon as every ACTIVE EQUITY instrument of the market has its row for the day."""
    catch_up_days: int = Field(default=4, ge=0)
    """Days before today the deadline still applies to (a worker that was down catches up)."""
    window_days: int | None = Field(default=None, ge=1)
    model_ids: tuple[str, ...] | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (an IANA name such as America/New_York)") from None
        return value

    @field_validator("model_ids")
    @classmethod
    def _known_models(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            try:
                validate_models(list(value))
            except Exception as e:
                raise ValueError(str(e)) from None
        return value


class Settings(BaseSettings):
    """Connection and tuning settings; defaults point at `embedder services up`."""

    model_config = SettingsConfigDict(env_prefix="EMBEDDER_", env_file=".env", extra="ignore", frozen=True)

    database_url: str = Field(
        default=LOCAL_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "EMBEDDER_DATABASE_URL"),
    )
    kafka_bootstrap_servers: str = Field(
        default=LOCAL_KAFKA_BOOTSTRAP,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "EMBEDDER_KAFKA_BOOTSTRAP_SERVERS"),
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    topic_replication_factor: int = Field(default=1, ge=1)
    """Replication of the topics the project creates (prices, dead letters, table changelogs)."""
    topic_min_insync_replicas: int | None = Field(default=None, ge=1)
    prices_retention_hours: float = Field(default=168.0, gt=0)
    """Retention of the prices topic: longer than any outage of every worker you want to ride out."""
    dead_letter_retention_hours: float = Field(default=720.0, gt=0)
    progress_seconds: float = Field(default=5.0, gt=0)
    """Off a terminal, long commands print a plain progress line this often."""
    log_format: Literal["text", "json"] = "text"
    """`json`: one JSON object per log line, for every command and the worker."""
    prices_topic: str = "embedder.prices"
    dead_letter_topic: str = "embedder.dead-letter"
    partitions: int = Field(default=8, ge=1)
    live_generation: int = Field(default=0, ge=0)
    """Set from the database's live layout (`shared.store.live_layout`), not by hand: which partitioning of the
    prices topic and the worker's state the live service runs (a repartition starts a new one)."""
    window_days: int = Field(default=63, ge=1)
    services_dir: Path = Path(".services")
    state_dir: Path = Path(".state")
    """Where a worker keeps its RocksDB table state (one sub-folder per worker)."""
    app_id: str = "embedder"
    """Faust application id: the consumer group and the prefix of its changelog topics."""
    sink_batch_embeddings: int = Field(default=20_000, ge=1)
    """Most embeddings per sink transaction (the sink groups the output of many events)."""
    sink_batch_seconds: float = Field(default=0.02, ge=0)
    """Longest the sink waits for more output before it writes what it has."""
    sink_connections: int = Field(default=2, ge=1)
    """Connections the sink writes on side by side, each for its share of the partitions (a partition's
    writes stay on one, in order). One PostgreSQL backend upserting alone falls behind the stream."""
    sink_max_pending_embeddings: int = Field(default=50_000, ge=1)
    """Embeddings queued for the sink before the stream waits for it (backpressure: a database outage
    stops the stream from reading on). Beyond what keeps both lanes busy, more costs memory only: a replay's
    windows keep the rows of every tick still queued (a whole-data-set replay's worker peaked at 560 MB with
    200,000, at ~300 MB with 50,000, in the same time)."""
    replay_block_days: int = Field(default=240, ge=1, le=366)
    """Calendar days of rows a replay sends per block, before the block's one tick. A replay's window is written
    whole once per block (a table value, its changelog record and a RocksDB write) and keeps one block beyond its
    look-back: a whole-data-set replay wrote 15,100 window values at 60 days, 8,000 at 120, ~4,000 at 240. At 240
    days its worker and broker spend ~1 CPU-s less than at 120 (0.0325-0.0336 CPU-s per 1,000 embeddings in all,
    against 0.0347-0.0349), for a worker peak RSS of 317 MB against 288; 360 days saves nothing more (375 MB)."""
    retention_slack_days: int = Field(default=31, ge=0)
    """Calendar days of rows kept beyond one look-back, for late rows and corrections."""
    live_model_ids: tuple[str, ...] = ("num-regime-core-v1",)
    """Models the live service computes on `embedder tick`."""
    outbox_poll_seconds: float = Field(default=0.1, gt=0)
    """How often the live relay looks for new outbox entries when idle."""
    outbox_keep_hours: float = Field(default=24.0, ge=0)
    """Published outbox entries older than this are deleted by the relay (0 keeps them all)."""
    version_retention_days: float | None = Field(default=None, gt=0)
    """Superseded embeddings (numeric_window_embedding_versions) older than this are deleted by the relay;
    unset keeps them all. Reads as known at an instant are exact only within it."""
    capture_idle_hours: float = Field(default=72.0, ge=0)
    """Capture stops by itself after this many hours without a relay (0: never); a worker starting
    after such a gap rebuilds the live windows and rechecks the table from prices_daily."""
    bootstrap_chunk_instruments: int = Field(default=100, ge=1)
    """Instruments per bootstrap snapshot: the relay loads one chunk's look-back at a time."""
    auto_tick_quiet_seconds: float = Field(default=0.0, ge=0)
    """If > 0, the live relay ticks the newest captured trade date after this many quiet seconds."""
    tick_schedule: tuple[MarketSchedule, ...] = ()
    """Per-market daily ticks (JSON list), e.g. [{"market_id": "US_EQ", "deadline": "18:30",
    "timezone": "America/New_York"}]; empty: ticks come from `embedder tick` (or cron)."""
    schedule_check_seconds: float = Field(default=2.0, gt=0)
    """How often the relay checks the schedule when idle."""
    web_port: int = Field(default=6066, ge=-1, le=65535)
    """The worker's web port (/metrics, /livez, /readyz, /lag); 0 picks a free one, -1 turns it off."""
    web_host: str = "127.0.0.1"
    lag_sample_seconds: float = Field(default=5.0, gt=0)
    """How often the worker samples its group's lag for the metrics and the lag page."""
    stop_grace_seconds: float = Field(default=30.0, gt=0)
    """After SIGTERM/SIGINT, how long a graceful stop may take before the worker exits anyway."""
    commit_interval_seconds: float = Field(default=2.8, gt=0)
    """How often the worker commits the offsets of the events it has processed (faust's default, 2.8 s). The
    worker a one-shot replay starts commits every `ONE_SHOT_COMMIT_SECONDS` (backfill/worker_process.py): the
    command waits for its group to have no lag before it stops the worker."""
    consumer_fetch_wait_ms: int = Field(default=100, ge=1, le=30_000)
    """Longest a fetch of the worker's consumer waits at the broker (faust's fixed 1,500 ms let a live
    tick's rows wait that long in the topic: streams/faust_fixes.py, fix 4)."""
    allow_unverified_faust: bool = False
    """Start the worker on faust-streaming / mode-streaming / aiokafka versions the patches in
    streams/faust_fixes.py were not verified against (after re-running the resilience tests)."""
    write_batch_embeddings: int = Field(default=20_000, ge=1)
    """How many embeddings the direct path stages per COPY + upsert transaction."""
    correction_batch_instruments: int = Field(default=10, ge=1)
    """Instruments the correction path recomputes per transaction (memory and lock time stay bounded)."""
    parity_audit_seconds: float = Field(default=60.0, ge=0)
    """How often the worker's parity audit recomputes a sample of stored keys (0 turns it off)."""
    parity_sample_keys: int = Field(default=200, ge=0)
    """Stored keys the parity audit samples per round (besides every key a correction recomputed)."""
    parity_risk_keys: int = Field(default=200, ge=0)
    """Keys the audit takes per round from each place a stale one is likely (keys rewritten since its last
    round, keys recent price changes reach, keys of recently ticked dates); 0 leaves them out."""
    parity_sweep_hours: float = Field(default=24.0, ge=0)
    """The audit's sweep checks every stored key once in this many hours (0 turns the sweep off)."""
    parity_repair: bool = True
    """Queue every mismatch the audit finds for the database path (it is counted and logged first)."""

    @property
    def capture_idle_limit(self) -> float | None:
        """The idle limit as the capture switch stores it (None: capture never stops by itself)."""
        return self.capture_idle_hours or None


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process exactly `settings`: every field, under the variable it is
    read from (complex values as JSON, as pydantic-settings reads them); unset optional ones are left out."""
    env: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is None:
            continue
        alias = field.validation_alias
        key = alias.choices[0] if isinstance(alias, AliasChoices) else f"EMBEDDER_{name.upper()}"
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float | Path):
            text = str(value)
        else:
            text = json.dumps(TypeAdapter(field.annotation or object).dump_python(value, mode="json"))
        env[str(key)] = text
    return env


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    """The process-wide settings, read once from the environment; a bad value is BadSettings naming
    the variable (one line, exit 2 in the CLI), never a traceback."""
    try:
        return Settings()
    except ValidationError as e:
        first = e.errors()[0]
        field, *path = [str(p) for p in first.get("loc", ())] or ["?"]
        alias = {"database_url": "DATABASE_URL", "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS"}
        name = alias.get(field, f"EMBEDDER_{field.upper()}") + "".join(f"[{p}]" for p in path)
        raise BadSettings(f"invalid setting {name}: {first.get('msg')}") from None


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***`, safe for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def scrub_secret(message: str, url: str) -> str:
    """`message` with the password of `url` removed wherever it appears as a token of its own (so a
    password that is also a word, such as the local `embedder`, leaves `embedder_bootstrap` alone)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    message = message.replace(url, redact_url(url))
    if password:
        message = re.sub(rf"(?<![\w]){re.escape(password)}(?![\w])", "***", message)
    return message
