"""`embedder embeddings export|history|keep-history`: the table for the platform's consumers, current or
as known at an instant, the versions of one embedding, and the history switch."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from embedder.console import CountedProgress, err, out
from embedder.embedding_files import FORMATS, write_embeddings
from shared.contract.config import Settings
from shared.contract.errors import BadArguments
from shared.contract.models import validate_models
from shared.store.db import connection
from shared.store.embedding_history import drift, history_state, switch_history, versions_of
from shared.store.embedding_reads import EmbeddingQuery, iter_batches, resolve, to_date


def run_export(
    settings: Settings, query: EmbeddingQuery, market_id: str | None, fmt: str, output: Path, force: bool
) -> int:
    """Export the selection to `output`; returns rows written."""
    if fmt not in FORMATS:
        raise BadArguments(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if output.exists() and not force:
        raise BadArguments(f"{output} exists (--force replaces it)")
    if not output.parent.is_dir():
        raise BadArguments(f"{output.parent} is not a folder")
    started = time.perf_counter()
    url = settings.database_url
    query = resolve(url, query, market_id)
    metadata = {
        "model_id": query.model_id,
        "known_at": query.known_at.isoformat() if query.known_at else "now",
        "date_from": str(query.date_from),
        "date_to": str(query.date_to),
    }
    shown = CountedProgress(f"export {fmt}")
    shown.start(None, str(output))
    try:
        written = write_embeddings(iter_batches(url, query), output, fmt, query.model_id, shown.advance, metadata)
    finally:
        shown.stop()
    elapsed = time.perf_counter() - started
    when = f" as known at {query.known_at.isoformat(timespec='seconds')}" if query.known_at else ""
    out.print(
        f"exported {written:,} embeddings of {query.model_id}{when} to {output} ({fmt}) in {elapsed:.1f}s "
        f"({written / elapsed if elapsed else 0:,.0f}/s)"
    )
    return written


def run_history(settings: Settings, instrument_id: str, as_of: str, model_id: str, as_json: bool) -> None:
    """List the versions of one embedding, oldest first, with the drift of each to the next."""
    validate_models([model_id])
    day = to_date(as_of, "--as-of")
    with connection(settings.database_url) as conn:
        versions = versions_of(conn, instrument_id, day, model_id)
    rows = []
    for k, v in enumerate(versions):  # drift: to the vector that came next (none after a removal)
        moved = drift(v.values, versions[k + 1].values) if k + 1 < len(versions) else None
        rows.append(
            {
                "recorded_from": v.recorded_from.isoformat(timespec="milliseconds"),
                "recorded_to": v.recorded_to.isoformat(timespec="milliseconds") if v.recorded_to else None,
                "window_days": v.window_days,
                "ended_by": v.ended_by,
                "cause": v.cause,
                "drift_max_abs": moved.max_abs if moved else None,
                "drift_cosine": moved.cosine if moved else None,
            }
        )
    if as_json:
        out.print_json(
            json.dumps({"instrument_id": instrument_id, "as_of_date": str(day), "model_id": model_id, "versions": rows})
        )
        return
    if not rows:
        out.print(f"no embedding of {instrument_id} as of {day} ({model_id}) was ever stored while history was kept")
        return
    out.print(f"{instrument_id} as of {day} ({model_id}): {len(rows)} version(s), oldest first", highlight=False)
    for r in rows:
        span = f"{r['recorded_from']} → {r['recorded_to'] or 'now (current)'}"
        line = f"  {span}  window {r['window_days']}"
        if r["ended_by"]:
            line += f"  ended by {r['ended_by']}: {r['cause']}"
        if r["drift_max_abs"] is not None:
            cosine = f"{r['drift_cosine']:.6f}" if r["drift_cosine"] is not None else "n/a"
            line += f"  drift to next: max |Δ| {r['drift_max_abs']:.6g}, cosine {cosine}"
        out.print(line, highlight=False)


def run_keep_history(settings: Settings, on: bool | None) -> None:
    """Show, or switch on or off, the keeping of superseded embeddings."""
    with connection(settings.database_url) as conn:
        if on is None:
            state = history_state(conn)
        else:
            state = switch_history(conn, on, f"embedder embeddings keep-history on {socket.gethostname()}")
            conn.commit()
    retention = (
        f"versions kept {settings.version_retention_days:g} days"
        if settings.version_retention_days
        else "versions kept forever (EMBEDDER_VERSION_RETENTION_DAYS unset)"
    )
    if state.enabled:
        out.print(
            f"history on: {state.versions:,} versions; reads as known at an instant are exact from "
            f"{state.complete_since.isoformat(timespec='seconds')}; {retention}",
            highlight=False,
        )
    else:
        out.print(
            f"history off since {state.changed_at.isoformat(timespec='seconds')} ({state.changed_by}): "
            f"changes keep no version and reads as known at an instant are refused; {state.versions:,} "
            "versions kept from before",
            highlight=False,
        )
        if on is False:
            err.print("turning it on again makes history complete from that moment, not before", highlight=False)
