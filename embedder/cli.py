"""The `embedder` console script: Typer subcommands wired to the project's modules.

Errors print one line: bad arguments exit 2 (nothing written), failures exit 1.
"""

from __future__ import annotations

import logging
import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer

try:  # Typer >= 0.20 vendors click; older versions use the click package
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    import click.exceptions as click_exc  # type: ignore[no-redef]

from embedder import options as opt
from embedder.console import err, out
from embedder.exit_codes import INTERRUPTED, run_with_exit_codes
from embedder.stopping import run_until_stopped
from shared.contract.config import Settings, load_settings
from shared.contract.errors import BadArguments
from shared.contract.models import DEFAULT_MODEL_ID

app = typer.Typer(
    name="embedder",
    help="Streaming incremental embedder: prices_daily -> Kafka -> Faust -> numeric_window_embeddings.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags without `<bool>`, every value option with a named metavar
)
services_app = typer.Typer(
    help="Local Kafka (KRaft) and PostgreSQL for development, demos and CI.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
prices_app = typer.Typer(help="Loading daily prices.", no_args_is_help=True)
live_app = typer.Typer(help="The always-on service's live state.", no_args_is_help=True)
embeddings_app = typer.Typer(
    help="Reading the table: current or as known at an instant, and its history.", no_args_is_help=True
)
app.add_typer(services_app, name="services")
app.add_typer(db_app, name="db")
app.add_typer(prices_app, name="prices")
app.add_typer(live_app, name="live")
app.add_typer(embeddings_app, name="embeddings")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"embedder {version('numeric-window-embedder')}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """Streaming incremental embedder: prices_daily -> Kafka -> Faust -> numeric_window_embeddings."""


def _local_services():
    from embedder.services.local import LocalServices

    return LocalServices.under(load_settings().services_dir)


def live_settings() -> Settings:
    """The settings on the live layout the database records (partitions, prices topic): for commands that
    publish to or measure the prices topic."""
    from shared.store.live_layout import resolve_if_reachable

    return resolve_if_reachable(load_settings())


@services_app.command("up")
def services_up(
    brokers: Annotated[
        int,
        typer.Option(
            "--brokers",
            metavar="N",
            help="1: one broker; 3: a KRaft cluster of 3 nodes with replication 3 "
            "and min.insync.replicas 2 (ports 29192-29197).",
        ),
    ] = 1,
) -> None:
    """Start the local broker (or cluster) and database (idempotent); print the settings to export."""
    import time

    from shared.contract.errors import BadArguments

    services = _local_services()
    if brokers not in (1, services.cluster.size):
        raise BadArguments(f"--brokers takes 1 or {services.cluster.size}, got {brokers}")
    if brokers > 1:
        if services.kafka.running_pid():
            raise BadArguments("the single local broker runs: `embedder services down` first, then up --brokers N")
    elif services.clustered:
        raise BadArguments("the local Kafka cluster runs: `embedder services down` first, or up --brokers N")
    t0 = time.perf_counter()
    with err.status("starting PostgreSQL..."):
        pg_started = services.postgres.up()
    with err.status(f"starting Kafka ({brokers} node{'s' if brokers > 1 else ''})..."):
        kafka_started = services.cluster.up() if brokers > 1 else services.kafka.up()
    err.print(
        f"PostgreSQL {'started' if pg_started else 'already running'}, "
        f"Kafka {'started' if kafka_started else 'already running'} ({time.perf_counter() - t0:.1f}s)"
    )
    for key, value in services.env(cluster=brokers > 1).items():
        out.print(f"export {key}={value}", highlight=False, soft_wrap=True)


@services_app.command("down")
def services_down() -> None:
    """Stop the local broker (or cluster) and database this project started."""
    services = _local_services()
    kafka = services.kafka.down()
    cluster = services.cluster.down()
    pg = services.postgres.down()
    out.print(
        f"Kafka {'stopped' if kafka or cluster else 'was not running'}; "
        f"PostgreSQL {'stopped' if pg else 'was not running'}"
    )


@services_app.command("status")
def services_status() -> None:
    """Show whether the local services run, and where."""
    services = _local_services()
    if services.clustered:
        out.print(f"kafka cluster: {services.cluster.status()}", highlight=False)
    else:
        out.print(f"kafka: {services.kafka.status()}", highlight=False)
    out.print(f"postgres: {services.postgres.status()}", highlight=False)
    for key, value in services.env(cluster=services.clustered).items():
        out.print(f"export {key}={value}", highlight=False, soft_wrap=True)


@db_app.command("status")
def db_status() -> None:
    """List applied and pending migrations; exit 0 when none is pending, else 1 (for deploy checks)."""
    from shared.store.migrate import migration_status

    applied, pending = migration_status(load_settings().database_url)
    for m in applied:
        out.print(f"applied  {m}", highlight=False)
    for m in pending:
        out.print(f"pending  {m}", highlight=False)
    out.print(
        f"{len(applied)} applied, {len(pending)} pending" + (": run `embedder db upgrade`" if pending else ""),
        highlight=False,
    )
    if pending:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (creates missing tables, adds the idempotency key)."""
    from shared.store.migrate import upgrade

    settings = load_settings()
    migration_log = logging.getLogger("embedder.migrations")
    migration_log.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    migration_log.addHandler(handler)
    result = upgrade(settings.database_url)
    if result.applied:
        out.print(f"applied: {', '.join(result.applied)}", highlight=False)
    else:
        out.print(f"database is up to date ({result.already_applied} migrations applied before)", highlight=False)


@db_app.command("grants")
def db_grants(
    service_role: Annotated[
        str, typer.Option("--service-role", metavar="ROLE", help="The role the worker and the commands run as.")
    ],
    reader_role: Annotated[
        str | None,
        typer.Option("--reader-role", metavar="ROLE", help="A read-only role for the embeddings' consumers."),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Run the statements (as the owner), not only print them.")
    ] = False,
) -> None:
    """Print (or with --apply run) the exact GRANT statements the embedder's roles need on the installed schema."""
    from shared.store.db import connection
    from shared.store.grants import apply_grants, grants

    with connection(load_settings().database_url) as conn:
        planned = grants(conn, service_role, reader_role)
        for grant in planned:
            out.print(grant.sql(), highlight=False, soft_wrap=True)
        if apply:
            apply_grants(conn, planned)
            conn.commit()
            err.print(f"applied {len(planned)} grant(s)", highlight=False)


@prices_app.command("import")
def prices_import(
    paths: Annotated[
        list[Path],
        typer.Argument(metavar="FILE...", help="CSV or CSV.gz files (Yahoo, Kaggle or prices_daily layout)."),
    ],
    market_id: Annotated[
        str, typer.Option("--market-id", metavar="MARKET", help="Market for newly registered instruments.")
    ] = "US_EQ",
    currency: Annotated[
        str, typer.Option("--currency", metavar="CODE", help="Currency for layouts without one.")
    ] = "USD",
) -> None:
    """Load price files into prices_daily, registering unknown symbols."""
    import time

    from backfill.price_import import check_paths, import_prices
    from embedder.console import progress

    settings = load_settings()
    paths = check_paths(paths)
    t0 = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("import", total=None, detail="rows read")
        result = import_prices(
            settings.database_url,
            paths,
            market_id=market_id,
            currency=currency,
            on_rows=lambda n: bar.advance(task, n),
        )
    elapsed = time.perf_counter() - t0
    out.print(
        f"files: {len(result.files)}  rows read: {result.rows:,}  inserted: {result.inserted:,}  "
        f"updated: {result.updated:,}  unchanged: {result.unchanged:,}  new instruments: {result.new_instruments}  "
        f"({elapsed:.1f}s, {result.rows / elapsed if elapsed else 0:,.0f} rows/s)",
        highlight=False,
    )
    rejected = result.rejected
    if rejected:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in rejected.most_common())
        out.print(f"rejected: {sum(rejected.values()):,} ({reasons})", highlight=False)
    else:
        out.print("rejected: 0", highlight=False)


@prices_app.command("synthetic")
def prices_synthetic(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="Output file (.csv or .csv.gz, Yahoo layout).")],
    instruments: Annotated[int, typer.Option("--instruments", min=1, metavar="N", help="How many instruments.")] = 60,
    date_from: Annotated[str, typer.Option("--from", metavar="DATE", help="First business day.")] = "2015-01-12",
    date_to: Annotated[str, typer.Option("--to", metavar="DATE", help="Last business day.")] = "2020-01-10",
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Random seed (same seed, same file).")] = 7,
) -> None:
    """Write a realistic synthetic market (gaps, short histories, zero volumes)."""
    from backfill.selection import parse_date
    from backfill.synthetic import write_synthetic_csv

    start, end = parse_date(date_from, "--from"), parse_date(date_to, "--to")
    if start > end:
        raise BadArguments(f"--from {start} is after --to {end}")
    rows = write_synthetic_csv(path, instruments, start, end, seed)
    out.print(f"wrote {rows:,} rows for {instruments} instruments to {path}", highlight=False)


@app.command("replay")
def replay(
    as_of: opt.AsOf = None,
    date_from: opt.DateFrom = None,
    date_to: opt.DateTo = None,
    window_days: Annotated[int, typer.Option("--window-days", metavar="N", help="Trading days per window.")] = 63,
    market_id: opt.MarketId = None,
    limit: opt.Limit = None,
    offset: opt.Offset = 0,
    instrument_id: opt.InstrumentIds = None,
    model_id: Annotated[
        Optional[list[str]],
        typer.Option("--model-id", metavar="MODEL", help=f"A model (repeatable; default {DEFAULT_MODEL_ID})."),
    ] = None,
    direct: Annotated[bool, typer.Option("--direct", help="Compute from Postgres without Kafka (batch path).")] = False,
    publish_rows: Annotated[
        bool,
        typer.Option(
            "--publish-rows",
            help="Publish the selection's rows through Kafka into a run of its own, even when the "
            "live worker could answer it.",
        ),
    ] = False,
) -> None:
    """Compute embeddings for a date range or one as_of date, then exit."""
    from backfill.selection import RunSelection
    from embedder.replay_command import run_replay

    selection = RunSelection.build(
        window_days=window_days,
        model_ids=model_id or [DEFAULT_MODEL_ID],
        as_of=as_of,
        date_from=date_from,
        date_to=date_to,
        market_id=market_id,
        instrument_ids=instrument_id,
        limit=limit,
        offset=offset,
    )
    if direct and publish_rows:
        raise BadArguments("--publish-rows publishes through Kafka; --direct computes without it: choose one")
    settings = load_settings() if direct else live_settings()

    def work(stop: object) -> None:
        run_replay(settings, selection, direct=direct, publish_rows=publish_rows)

    run_until_stopped(
        work,
        stopped_code=INTERRUPTED,
        message="embedder: interrupted (what was committed stays; running it again completes the rest)",
    )


@app.command("worker")
def worker(
    data_dir: Annotated[
        Optional[Path],
        typer.Option("--data-dir", metavar="DIR", help="RocksDB state folder (default EMBEDDER_STATE_DIR/worker)."),
    ] = None,
    loglevel: Annotated[
        str, typer.Option("--loglevel", metavar="LEVEL", help="crit, error, warn, info or debug.")
    ] = "warn",
    capture: Annotated[
        bool, typer.Option("--capture/--no-capture", help="Relay prices_outbox (live capture and ticks) to Kafka.")
    ] = True,
    for_run: Annotated[
        bool,
        typer.Option(
            "--for-run",
            hidden=True,
            help="A worker `embedder replay` starts for its run: the stream and its sink only (no capture, "
            "correction path or parity audit: the always-on service's).",
        ),
    ] = False,
) -> None:
    """The always-on streaming service: live capture, bootstrap, windows, ticks and the Postgres sink,
    the correction path and the parity audit."""
    from live.service import run_service

    run_service(load_settings(), data_dir, loglevel, capture and not for_run, companions=not for_run)


@app.command("tick")
def tick(
    as_of: Annotated[str, typer.Option("--as-of", metavar="DATE", help="The day that is complete (YYYY-MM-DD).")],
    market_id: Annotated[
        Optional[str],
        typer.Option("--market-id", metavar="MARKET", help="Only this market's instruments (default: every market)."),
    ] = None,
    window_days: Annotated[
        Optional[int],
        typer.Option("--window-days", metavar="N", help="Trading days per window (default EMBEDDER_WINDOW_DAYS)."),
    ] = None,
    model_id: Annotated[
        Optional[list[str]],
        typer.Option("--model-id", metavar="MODEL", help="A model (repeatable; default EMBEDDER_LIVE_MODEL_IDS)."),
    ] = None,
) -> None:
    """Declare day D complete for the live service: it emits the embedding as of D of every ACTIVE
    EQUITY instrument (of the market).

    The tick is queued in prices_outbox behind every row committed before it, and behind the bootstrap
    of instruments not loaded yet, so it cannot overtake them.
    """
    from backfill.selection import parse_date
    from live.bootstrap import enqueue_tick
    from shared.contract.models import validate_models
    from shared.contract.validation import date_problem
    from shared.store.db import connection

    settings = load_settings()
    day = parse_date(as_of, "--as-of")
    if date_problem(day):
        raise BadArguments(f"--as-of {day}: {date_problem(day)}")
    models = [m.model_id for m in validate_models(model_id or list(settings.live_model_ids))]
    n = window_days or settings.window_days
    if n < 1:
        raise BadArguments(f"--window-days must be at least 1, got {n}")
    with connection(settings.database_url) as conn:
        outbox_id = enqueue_tick(conn, day, n, models, market_id, settings.bootstrap_chunk_instruments)
    scope = f" for market {market_id}" if market_id else ""
    out.print(
        f"tick {day}{scope} queued (outbox id {outbox_id}); the worker's relay publishes it after earlier rows",
        highlight=False,
    )


@live_app.command("bootstrap")
def live_bootstrap(
    market_id: Annotated[Optional[str], typer.Option("--market-id", metavar="MARKET", help="Only this market.")] = None,
    reset: Annotated[
        bool,
        typer.Option(
            "--reset",
            help="Load again what was loaded before (the live windows were lost: new Kafka cluster or app id).",
        ),
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the worker's relay has loaded everything queued.")
    ] = True,
) -> None:
    """Load instruments' history from prices_daily into the live windows (the worker does this by itself
    on start and for instruments that become ACTIVE; this runs it now, with progress)."""
    from embedder.live_command import run_bootstrap

    run_bootstrap(load_settings(), market_id, reset, wait)


@live_app.command("capture")
def live_capture(
    on: Annotated[
        Optional[bool],
        typer.Option(
            "--on/--off",
            help="Turn capture on (the triggers write the outbox; a gap is resynced) or off (nothing is captured).",
        ),
    ] = None,
) -> None:
    """Show or switch live capture. The worker turns it on when it starts relaying; off, or after
    EMBEDDER_CAPTURE_IDLE_HOURS without a relay, the platform's writes cost no capture and no outbox grows.
    Turning it on after a gap rebuilds the live windows and rechecks the table from prices_daily."""
    from embedder.live_command import run_capture

    run_capture(load_settings(), on)


@live_app.command("repartition")
def live_repartition(
    partitions: Annotated[
        int, typer.Argument(metavar="N", help="The new partition count of the prices topic and the workers' state.")
    ],
) -> None:
    """Move the live service to N partitions (more workers can then share it, or fewer partitions serve a
    smaller one). Running workers restart on the new layout by themselves and reload their windows from
    prices_daily; ticks wait meanwhile and none is lost (docs/operations.md → Repartitioning)."""
    from embedder.live_command import run_repartition

    run_repartition(live_settings(), partitions)


@embeddings_app.command("export")
def embeddings_export(
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", help="The file to write.")],
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="parquet, npy or csv.")] = "parquet",
    as_of: opt.AsOf = None,
    date_from: opt.DateFrom = None,
    date_to: opt.DateTo = None,
    market_id: opt.MarketId = None,
    instrument_id: opt.InstrumentIds = None,
    model_id: Annotated[str, typer.Option("--model-id", metavar="MODEL", help="The model.")] = DEFAULT_MODEL_ID,
    window_days: Annotated[
        Optional[int], typer.Option("--window-days", metavar="N", help="Only rows of this window.")
    ] = None,
    known_at: Annotated[
        Optional[str],
        typer.Option(
            "--known-at",
            metavar="TIME",
            help="The table as it was at this instant (ISO 8601; UTC when no offset is given).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Export stored embeddings (now, or as known at an instant) to Parquet, .npy or CSV, with progress."""
    from embedder.embeddings_command import run_export
    from shared.store.embedding_reads import EmbeddingQuery

    if market_id is not None and instrument_id:
        raise BadArguments("give --market-id or --instrument-id, not both")
    query = EmbeddingQuery.build(
        model_id,
        as_of=as_of,
        date_from=date_from,
        date_to=date_to,
        window_days=window_days,
        known_at=known_at,
        instrument_ids=instrument_id or None,
    )
    partial = output.with_name(f".{output.name}.partial")  # what the writer renames at its end

    def work(stop: object) -> None:
        run_export(load_settings(), query, market_id, fmt, output, force)

    run_until_stopped(
        work,
        cleanup=lambda: partial.unlink(missing_ok=True),
        stopped_code=INTERRUPTED,
        message=f"embedder: interrupted; {output} was not written",
    )


@embeddings_app.command("history")
def embeddings_history(
    instrument_id: Annotated[str, typer.Option("--instrument-id", metavar="ID", help="The instrument.")],
    as_of: Annotated[str, typer.Option("--as-of", metavar="DATE", help="The as_of date.")],
    model_id: Annotated[str, typer.Option("--model-id", metavar="MODEL", help="The model.")] = DEFAULT_MODEL_ID,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The versions of one embedding: when each was current, what ended it and why, and how far it moved."""
    from embedder.embeddings_command import run_history

    run_history(load_settings(), instrument_id, as_of, model_id, as_json)


@embeddings_app.command("keep-history")
def embeddings_keep_history(
    on: Annotated[
        Optional[bool], typer.Option("--on/--off", help="Keep superseded embeddings (default) or not.")
    ] = None,
) -> None:
    """Show or switch the keeping of superseded embeddings (what reads as known at an instant need);
    EMBEDDER_VERSION_RETENTION_DAYS bounds how long they are kept."""
    from embedder.embeddings_command import run_keep_history

    run_keep_history(load_settings(), on)


@app.command("lag")
def lag(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report (docs/live-service.md).")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until interrupted.")] = False,
    samples: Annotated[
        int, typer.Option("--samples", min=1, metavar="N", help="Readings before judging (one-shot).")
    ] = 3,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, metavar="SECONDS", help="Seconds between readings.")
    ] = 1.0,
    window: Annotated[
        float, typer.Option("--window", min=1, metavar="SECONDS", help="Sliding window of the statuses, seconds.")
    ] = 60.0,
    group: Annotated[
        Optional[str], typer.Option("--group", metavar="GROUP", help="Consumer group (default EMBEDDER_APP_ID).")
    ] = None,
    serve: Annotated[
        Optional[int],
        typer.Option(
            "--serve",
            metavar="PORT",
            min=0,
            help="Export the lag as Prometheus metrics on PORT until interrupted (reads only the broker).",
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Address --serve listens on.")] = "127.0.0.1",
) -> None:
    """Consumer lag of the worker group per topic and partition, in messages and seconds, with a status
    (OK, WARN, REWIND, STALL, STOP, ERR). Read from the broker, so it works while every worker is down.

    Exit code: 0 OK, 3 WARN, 4 REWIND, 5 STALL, 6 STOP, 1 ERR (the worst group's status)."""
    from embedder.lag_command import run_lag

    code = run_lag(live_settings(), as_json, watch, samples, interval, window, group, serve, host)
    if code:
        raise typer.Exit(code)


@app.command("status")
def status(
    since: Annotated[
        str,
        typer.Option("--since", metavar="WHEN", help="Count dead letters since: 24h, 7d, an ISO date or date-time."),
    ] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable (version 1).")] = False,
) -> None:
    """The live service at a glance: last tick per market (embedded, without enough history, without a row
    that day), the tick schedule, bootstrap progress, outbox backlog, the relay's holder, dead letters."""
    from embedder.status_command import run_status

    run_status(live_settings(), since, as_json)


@app.command("dead-letters")
def dead_letters(
    since: Annotated[
        Optional[str],
        typer.Option(
            "--since",
            metavar="WHEN",
            help="Only these: 24h, 7d, an ISO date or date-time (default: every retained one).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable (version 1).")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N", help="Newest records shown in full.")] = 50,
    redrive: Annotated[
        bool,
        typer.Option(
            "--redrive",
            help="Capture the live rows shown again as prices_daily holds them now (after fixing them there).",
        ),
    ] = False,
) -> None:
    """Rows and messages the stream refused, with their reasons, counted by reason."""
    from embedder.dead_letters_command import run_dead_letters

    run_dead_letters(load_settings(), since, as_json, limit, redrive)


@app.command("verify")
def verify(
    date_from: opt.DateFrom = None,
    date_to: opt.DateTo = None,
    as_of: opt.AsOf = None,
    market_id: opt.MarketId = None,
    instrument_id: opt.InstrumentIds = None,
    limit: opt.Limit = None,
    offset: opt.Offset = 0,
    model_id: Annotated[
        Optional[list[str]],
        typer.Option("--model-id", metavar="MODEL", help="A model (repeatable; default: every model stored)."),
    ] = None,
    window_days: Annotated[
        Optional[int],
        typer.Option(
            "--window-days",
            metavar="N",
            help="Window of keys with no "
            "stored row (default EMBEDDER_WINDOW_DAYS); stored rows use "
            "their own window_spec.",
        ),
    ] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Rewrite what differs (same write path as every run).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable (version 1).")] = False,
) -> None:
    """Recompute a selection from prices_daily and compare it with the table: missing, extra, different
    bytes, duplicates. With instruments and dates both given, every key `replay --direct` would write is
    checked too; otherwise the stored and recorded keys of the selection.

    Exit code: 0 equal (or repaired), 3 differences found, 2 bad arguments, 1 database error."""
    from backfill.selection import parse_date
    from backfill.verify import VerifySelection
    from embedder.verify_command import run_verify

    settings = load_settings()
    selection = VerifySelection(
        date_from=parse_date(date_from, "--from") if date_from else None,
        date_to=parse_date(date_to, "--to") if date_to else None,
        as_of=parse_date(as_of, "--as-of") if as_of else None,
        market_id=market_id,
        instrument_ids=tuple(dict.fromkeys(instrument_id or ())),
        limit=limit,
        offset=offset,
        model_ids=tuple(dict.fromkeys(model_id or ())),
        window_days=window_days or settings.window_days,
    )
    code = run_verify(settings, selection, repair, as_json)
    if code:
        raise typer.Exit(code)


@app.command("show")
def show(
    as_of: Annotated[str, typer.Option("--as-of", metavar="DATE", help="The as_of date (YYYY-MM-DD).")],
    model_id: Annotated[str, typer.Option("--model-id", metavar="MODEL", help="The model.")] = DEFAULT_MODEL_ID,
    values: Annotated[int, typer.Option("--values", metavar="N", help="How many leading values to print.")] = 6,
) -> None:
    """Summarise stored embeddings for one as_of date and model, decoding one vector."""
    from backfill.selection import parse_date
    from embedder.inspect import summarise

    day: date = parse_date(as_of, "--as-of")
    summarise(load_settings().database_url, day, model_id, values)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning every expected error into one line and an exit code."""
    command = typer.main.get_command(app)
    from shared.logs import configure

    settings = None
    try:
        settings = load_settings()
        log_format = settings.log_format
    except BadArguments:
        log_format = "text"  # the bad setting is reported as the command's one-line error
    configure(log_format)
    # The Kafka clients log every reconnect attempt to a lost broker; commands say once what they wait for
    # (shared.broker.kafka_retry) and what failed, in their own words. The worker shows the clients' lines
    # itself, once a minute each (streams/worker.py).
    from shared.broker.kafka_refusals import capture_refusals

    capture_refusals(settings)

    def body() -> int | None:
        try:
            # standalone_mode=False: click returns a command's typer.Exit code instead of exiting;
            # it is this process's exit code (it was dropped before, so `embedder lag` exited 0 on ERR).
            return command.main(args=argv, prog_name="embedder", standalone_mode=False)
        except click_exc.NoArgsIsHelpError as e:
            e.show()
            raise typer.Exit(2) from None
        except click_exc.UsageError as e:
            raise BadArguments(e.format_message()) from None

    try:
        code = run_with_exit_codes("embedder", body)
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        sys.stderr.write("embedder: aborted\n")
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
