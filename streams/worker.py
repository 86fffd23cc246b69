"""`embedder worker`: the always-on Faust worker (also started by a replay when none is running)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import faust
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from shared.broker.kafka_refusals import capture_refusals
from shared.broker.topics import ensure_topics
from shared.contract.config import Settings
from shared.logs import json_logging_config, quiet_repeats
from shared.metrics import StreamMetrics
from streams.adapter import LostWindows
from streams.app import create_app
from streams.layout_watch import LayoutWatch, restart_process
from streams.web import LagSampler, WorkerStatus, serve

log = logging.getLogger("embedder.worker")
PORT_FILE = "web.port"
YOUNG_COLLECTION_THRESHOLD = 10_000
"""Net allocations of container objects between two young-generation collections (Python's default: 700). A
replay's or a tick's tuples, rows and embeddings are freed by reference counting within the message; at 700 the
collector ran ~2,800 times a replay (6 % of the stream logic's CPU on dict tables) and a full collection about once
per live tick (4-15 ms each at 5,000 instruments, most of them collecting nothing). Cycles are collected later."""


def watch_assignment(app: faust.App, settings: Settings, status: WorkerStatus, metrics: StreamMetrics) -> None:
    """Keep the count of prices partitions this worker holds (readiness needs at least one)."""

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # faust types its async receivers narrowly
    async def on_assigned(sender, assigned, **kwargs) -> None:
        status.assigned = sum(1 for tp in assigned if tp.topic == settings.prices_topic)
        metrics.assigned_partitions.set(status.assigned)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust types its async receivers narrowly
    async def on_revoked(sender, revoked, **kwargs) -> None:
        status.ready.clear()
        status.assigned = 0
        metrics.assigned_partitions.set(0)

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # faust types its async receivers narrowly
    async def on_recovered(sender, **kwargs) -> None:
        status.ready.set()


def start_web(
    settings: Settings, datadir: Path, registry: CollectorRegistry, metrics: StreamMetrics, status: WorkerStatus
) -> Callable[[], None]:
    """The lag sampler and the web port; the bound port is written to `datadir/web.port`."""
    sampler = LagSampler(settings, status, metrics, settings.lag_sample_seconds)
    sampler.start()
    server = None
    if settings.web_port >= 0:
        try:
            server = serve(
                settings, registry, metrics, status, settings.lag_sample_seconds, settings.web_port, settings.web_host
            )
            port = server.server_address[1]
            written = datadir / f".{PORT_FILE}.tmp"  # renamed into place: a reader never sees it half written
            written.write_text(f"{port}\n")
            os.replace(written, datadir / PORT_FILE)
            log.warning(
                "metrics, health and the lag page on http://%s:%s/ (/metrics /livez /readyz /lag)",
                settings.web_host,
                port,
            )
        except OSError as e:
            log.error("web port %s unavailable (%s): no metrics or health endpoints", settings.web_port, e)

    def stop() -> None:
        sampler.stop.set()
        if server is not None:
            server.shutdown()

    return stop


class GracefulWorker(faust.Worker):
    """faust's Worker with a bound on its graceful stop.

    faust-streaming 0.15.3 / mode can hang in a stop that arrives during a rebalance: the main loop
    blocks in `ServiceThread.stop` waiting for the consumer thread, which never finishes (seen in
    the two-workers test, found with py-spy). After `grace` seconds the process exits with status 1.
    That loses nothing: the sink acks embeddings only after their database commit and prices events
    are committed only once processed, so an unfinished stop is a kill -9, which the reliability
    tests cover.
    """

    def __init__(self, *args, grace: float, **kwargs):
        super().__init__(*args, **kwargs)
        # faust's terminal spinner turns the root logger to DEBUG so that it spins on every record: every
        # debug call of faust and aiokafka (several per message sent) then builds a LogRecord that the
        # handler drops — 3-4 % of the worker's CPU in a live tick. The log is the worker's progress.
        self.spinner = None
        self.grace = grace
        self._watchdog: threading.Timer | None = None

    def _schedule_shutdown(self, signal) -> None:  # mode's hook for SIGTERM and SIGINT
        if self._watchdog is None:
            self._watchdog = threading.Timer(self.grace, self._give_up)
            self._watchdog.daemon = True
            self._watchdog.start()
        super()._schedule_shutdown(signal)

    def _gather_all(self) -> None:
        """mode waits up to 1 s (ten sleeps of 0.1 s) for tasks to end by themselves before it cancels
        them; the worker's long-lived tasks never do, so every stop paid the whole second."""
        for _ in range(10):
            if not asyncio.all_tasks(self.loop):
                break
            self.loop.run_until_complete(asyncio.sleep(0.01))
        for task in asyncio.all_tasks(self.loop):
            task.cancel()

    async def _sentinel_task(self) -> None:
        """mode's last step before closing the loop sleeps 1 s; a tenth lets cancelled tasks finish."""
        await asyncio.sleep(0.1)

    def _give_up(self) -> None:
        log.error(
            "graceful stop did not finish within %.0fs; exiting without it (nothing is lost: offsets "
            "are committed only after processing and the database commit)",
            self.grace,
        )
        logging.shutdown()
        os._exit(1)


Companion = Callable[[threading.Event, StreamMetrics], Callable[[], None]]


def run_worker(
    settings: Settings,
    datadir: Path,
    loglevel: str = "warn",
    beside: Companion | None = None,
    on_lost_windows: LostWindows | None = None,
) -> None:
    """Create the topics, then run the worker until SIGTERM/SIGINT (graceful stop).

    `beside` starts a companion (the live-capture relay) and returns its stop function; it gets the
    readiness event, so it publishes nothing before the worker has recovered its tables (messages
    that arrive during faust's startup recovery were lost before streams/faust_fixes.py; kept as a
    guard), and the worker's metrics. `on_lost_windows` is told of live instruments a tick found
    without a window (see streams/adapter.py).
    """
    capture_refusals(settings, show=True)  # the CLI silences the clients; the worker shows them,
    quiet_repeats()  # but a line a minute each: they log every reconnect to a lost broker
    ensure_topics(settings)
    datadir.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
    PlatformCollector(registry=registry)
    metrics = StreamMetrics.create(registry)
    status = WorkerStatus()
    app, sink = create_app(settings, datadir, metrics, on_lost_windows=on_lost_windows)
    quiet_repeats()  # again: the clients' modules are imported now
    watch_assignment(app, settings, status, metrics)
    layout = LayoutWatch(settings).start()  # `embedder live repartition`: stop, then start again on it
    # The sink first: once the app has stopped, what it queued is written before the process ends.
    stops = [sink.stop, start_web(settings, datadir, registry, metrics, status), layout.close]
    if beside:
        stops.append(beside(status.ready, metrics))
    try:
        logging_config = json_logging_config(loglevel) if settings.log_format == "json" else None
        # What exists now (modules, the app) lives as long as the process: the collector stops walking it.
        # faust's RocksDB store runs a full collection per table at every rebalance and stop (~0.1 s each).
        gc.freeze()
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, 10, 10)
        GracefulWorker(
            app, loglevel=loglevel, quiet=True, grace=settings.stop_grace_seconds, logging_config=logging_config
        ).execute_from_commandline()
    finally:
        for stop in stops:
            stop()
        if layout.restart.is_set():
            restart_process()
