"""The worker's Prometheus metrics, built against a registry passed in (so tests get their own).

Prometheus naming: an `embedder_` prefix, base units (seconds), `_total` counters, and no
per-instrument labels (label values stay few: topic, partition, message kind, run).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.broker.lag_status import LagStatus


@dataclass(frozen=True)
class StreamMetrics:
    events: Counter
    rows: Counter
    embeddings_emitted: Counter
    dead_letters: Counter
    sink_batch_embeddings: Histogram
    sink_commit_seconds: Histogram
    sink_retries: Counter
    sink_embeddings_committed: Counter
    last_committed_as_of: Gauge
    db_last_upsert: Gauge
    lag: LagMetrics
    ready: Gauge
    market_tick_due: Gauge
    market_tick_committed: Gauge
    assigned_partitions: Gauge
    offset_gaps: Counter
    tick_instruments: Counter
    bootstrap_instruments: Counter
    bootstrap_rows: Counter
    bootstrap_pending: Gauge
    outbox_backlog: Gauge
    outbox_keys: Gauge
    outbox_bytes: Gauge
    outbox_oldest_seconds: Gauge
    capture_on: Gauge
    embeddings_revised_today: Gauge
    corrections_to_database: Counter
    recompute_queue: Gauge
    recompute_changes: Counter
    recompute_keys: Counter
    recompute_seconds: Histogram
    parity_checked: Counter
    parity_mismatches: Counter
    parity_last_run: Gauge
    state_bytes: Counter
    writes_refused: Counter
    stale_rows_skipped: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> StreamMetrics:
        r = registry if registry is not None else CollectorRegistry()
        return cls(
            events=Counter("embedder_events", "Messages read from the prices topic, by kind.", ["kind"], registry=r),
            rows=Counter("embedder_rows", "Price rows read from the prices topic.", registry=r),
            embeddings_emitted=Counter("embedder_embeddings_emitted", "Embeddings sent to the sink topic.", registry=r),
            dead_letters=Counter("embedder_dead_letters", "Records sent to the dead-letter topic.", registry=r),
            sink_batch_embeddings=Histogram(
                "embedder_sink_batch_embeddings",
                "Embeddings per sink transaction.",
                registry=r,
                buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000),
            ),
            sink_commit_seconds=Histogram(
                "embedder_sink_commit_seconds",
                "Time to write and commit one sink batch.",
                registry=r,
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            ),
            sink_retries=Counter("embedder_sink_retries", "Sink writes retried after a database error.", registry=r),
            sink_embeddings_committed=Counter(
                "embedder_sink_embeddings_committed", "Embeddings committed to PostgreSQL by the sink.", registry=r
            ),
            last_committed_as_of=Gauge(
                "embedder_last_committed_as_of_timestamp_seconds",
                "Newest as_of date committed, for the live run and for replays (unix time of its midnight UTC).",
                ["run"],
                registry=r,
            ),
            db_last_upsert=Gauge(
                "embedder_db_last_upsert_timestamp_seconds",
                "When the sink last committed to PostgreSQL (unix time).",
                registry=r,
            ),
            lag=LagMetrics.create(r),
            ready=Gauge("embedder_ready", "1 while this worker is ready (what /readyz answers), else 0.", registry=r),
            market_tick_due=Gauge(
                "embedder_market_tick_due_as_of_timestamp_seconds",
                "Per market of the tick schedule: the newest "
                "day with rows whose deadline has passed (unix time of its midnight UTC).",
                ["market"],
                registry=r,
            ),
            market_tick_committed=Gauge(
                "embedder_market_tick_committed_as_of_timestamp_seconds",
                "Per market of the tick schedule: the newest day whose live tick is committed on every partition.",
                ["market"],
                registry=r,
            ),
            assigned_partitions=Gauge(
                "embedder_assigned_partitions", "Partitions assigned to this worker.", registry=r
            ),
            tick_instruments=Counter(
                "embedder_tick_instruments",
                "Instruments covered by ticks, by outcome: embedded, "
                "insufficient_history (no embedding: too few rows in the look-back), missing_today (no row "
                "on the ticked day; it may still be embedded from earlier rows).",
                ["outcome"],
                registry=r,
            ),
            bootstrap_instruments=Counter(
                "embedder_bootstrap_instruments",
                "Instruments whose history the live bootstrap loaded from prices_daily.",
                registry=r,
            ),
            bootstrap_rows=Counter("embedder_bootstrap_rows", "Rows the live bootstrap published.", registry=r),
            bootstrap_pending=Gauge(
                "embedder_bootstrap_pending_instruments",
                "Instruments queued for the live bootstrap and not loaded yet.",
                registry=r,
            ),
            outbox_backlog=Gauge("embedder_outbox_backlog", "prices_outbox entries not yet published.", registry=r),
            outbox_keys=Gauge(
                "embedder_outbox_backlog_keys",
                "Captured (instrument, date) keys the unpublished prices_outbox entries name.",
                registry=r,
            ),
            outbox_bytes=Gauge("embedder_outbox_bytes", "prices_outbox on disk (table, indexes, TOAST).", registry=r),
            outbox_oldest_seconds=Gauge(
                "embedder_outbox_oldest_unpublished_seconds",
                "Age of the oldest unpublished prices_outbox entry (0: none waits).",
                registry=r,
            ),
            capture_on=Gauge(
                "embedder_capture_on",
                "1 while the capture triggers write the outbox (the live "
                "service is enabled and a relay was seen within the idle limit), else 0.",
                registry=r,
            ),
            embeddings_revised_today=Gauge(
                "embedder_embeddings_revised_today",
                "Stored embeddings changed or removed since midnight UTC (each "
                "kept as a version), by cause: live, correction, replay, query, direct, repair, sql (written "
                "outside the project), other (a cause set by hand).",
                ["cause"],
                registry=r,
            ),
            offset_gaps=Counter(
                "embedder_offset_gaps",
                "Prices offsets the consumer skipped before the "
                "agent saw them (a faust-streaming bug during rebalances).",
                registry=r,
            ),
            corrections_to_database=Counter(
                "embedder_corrections_to_database",
                "Live corrections older than the stream's windows hold, "
                "left to the database path (recomputed from prices_daily).",
                registry=r,
            ),
            recompute_queue=Gauge(
                "embedder_recompute_queue",
                "Captured price changes still to be recomputed into the stored embeddings they reach.",
                registry=r,
            ),
            recompute_changes=Counter(
                "embedder_recompute_changes", "Captured price changes the database path has recomputed.", registry=r
            ),
            recompute_keys=Counter(
                "embedder_recompute_keys",
                "Maintained keys the database path recomputed, by outcome (unchanged, changed, removed).",
                ["outcome"],
                registry=r,
            ),
            recompute_seconds=Histogram(
                "embedder_recompute_seconds", "Time of one database-path transaction.", registry=r
            ),
            parity_checked=Counter(
                "embedder_parity_checked",
                "Stored keys the parity audit recomputed from prices_daily, by kind of check (sample, correction).",
                ["kind"],
                registry=r,
            ),
            parity_mismatches=Counter(
                "embedder_parity_mismatches",
                "Keys whose stored embedding differs from "
                "SPEC section 3 over prices_daily, by kind (different, missing, extra).",
                ["kind"],
                registry=r,
            ),
            parity_last_run=Gauge(
                "embedder_parity_last_run_timestamp_seconds", "When the parity audit last finished a round.", registry=r
            ),
            state_bytes=Counter(
                "embedder_state_bytes_written",
                "Bytes of values written to the worker's state "
                "tables (and so to their changelogs), by table: windows or runs.",
                ["table"],
                registry=r,
            ),
            writes_refused=Counter(
                "embedder_writes_refused",
                "Embeddings a write did not store because the table held them computed from newer prices "
                "(a frozen worker, a re-delivered tick, a slow correction), by writer.",
                ["writer"],
                registry=r,
            ),
            stale_rows_skipped=Counter(
                "embedder_stale_rows_skipped",
                "Price rows the stream did not apply because the window already held newer ones "
                "(published by a relay that lost its turn).",
                registry=r,
            ),
        )


LAG_STATUSES = tuple(LagStatus)


@dataclass(frozen=True)
class LagMetrics:
    """The consumer group's lag, per partition and as one Burrow-style status: exported by every
    worker, and by `embedder lag --serve` (which reads only the broker, so it reports with every
    worker down)."""

    messages: Gauge
    seconds: Gauge
    status: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> LagMetrics:
        return cls(
            messages=Gauge(
                "embedder_consumer_lag_messages",
                "Messages not yet committed by the worker group.",
                ["topic", "partition"],
                registry=registry,
            ),
            seconds=Gauge(
                "embedder_consumer_lag_seconds",
                "Age of the oldest message not yet committed.",
                ["topic", "partition"],
                registry=registry,
            ),
            status=Gauge(
                "embedder_lag_status",
                "The group's status over the sliding window, one-hot: OK, WARN "
                "(lag grows), REWIND (committed offsets moved back), STALL (members, offsets not moving), "
                "STOP (no member, lag > 0), ERR (broker unreadable).",
                ["group", "status"],
                registry=registry,
            ),
        )

    def record(self, report) -> None:
        """Set the gauges from a `shared.broker.lag.LagReport`."""
        for g in report.groups:
            for status in LAG_STATUSES:
                self.status.labels(g.group, status).set(1 if g.status == status else 0)
            for p in g.partitions:
                labels = (p.topic, str(p.partition))
                self.messages.labels(*labels).set(p.lag)
                if p.lag_seconds is not None:
                    self.seconds.labels(*labels).set(p.lag_seconds)
