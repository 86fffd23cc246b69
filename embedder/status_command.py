"""`embedder status`: the live service at a glance, from PostgreSQL (and the broker for dead letters).

Last live tick per market (with what it could not compute), the tick schedule,
the bootstrap's progress, the outbox backlog and which worker relays it, and
the dead letters since a time. Everything is read; nothing is changed.
"""

from __future__ import annotations

import json
from datetime import datetime

import psycopg

from embedder.console import out
from live.bootstrap import progress as bootstrap_progress
from live.capture import capture_state
from live.parity_audit import audit_summary
from live.relay import relay_holder
from shared.broker.dead_letters import count_since, parse_since
from shared.contract.config import Settings
from shared.contract.errors import ServiceUnavailable
from shared.store import scheduled_ticks
from shared.store.db import connection
from shared.store.embedding_history import history_state, revisions_by_day
from shared.store.embedding_store import refusals_by_day
from shared.store.maintained_keys import recompute_backlog
from shared.store.outbox import outbox_backlog
from shared.store.tick_commits import newest_live_ticks
from shared.store.write_claims import relay_round


def scheduled(conn: psycopg.Connection, settings: Settings) -> list[dict]:
    """Per market of the schedule: its rule and its newest scheduled tick."""
    out_ = []
    for s in settings.tick_schedule:
        row = scheduled_ticks.newest(conn, s.market_id)
        last = (
            None
            if row is None
            else {
                "as_of": row[0].isoformat(),
                "reason": row[1],
                "instruments": row[2],
                "expected": row[3],
                "queued_at": row[4].isoformat(timespec="seconds"),
            }
        )
        out_.append(
            {
                "market": s.market_id,
                "deadline": s.deadline.isoformat("minutes") if s.deadline else None,
                "timezone": s.timezone,
                "when_complete": s.when_complete,
                "last": last,
            }
        )
    return out_


def history(conn: psycopg.Connection) -> dict:
    """The history switch, and embeddings revised per UTC day and cause over the last week."""
    state = history_state(conn)
    days: dict[str, dict[str, int]] = {}
    for day, cause, n in revisions_by_day(conn, 7):
        days.setdefault(str(day), {})[cause] = int(n)
    return {
        "enabled": state.enabled,
        "complete_since": state.complete_since.isoformat(timespec="seconds"),
        "versions": state.versions,
        "revised_by_day": days,
    }


def fencing(conn: psycopg.Connection) -> dict:
    """The relay's round, and writes refused per UTC day and writer over the last week (issue 26)."""
    days: dict[str, dict[str, int]] = {}
    for day, writer, n in refusals_by_day(conn, 7):
        days.setdefault(str(day), {})[writer] = n
    return {"relay_round": relay_round(conn), "refused_by_day": days}


def gather(settings: Settings, since: datetime) -> dict:
    """Everything the status shows, as JSON-ready data (version 1)."""
    with connection(settings.database_url, autocommit=True) as conn:
        boot = bootstrap_progress(conn)
        backlog = outbox_backlog(conn)
        capture = capture_state(conn)
        holder = relay_holder(conn)
        report = {
            "version": 1,
            "layout": {"partitions": settings.partitions, "generation": settings.live_generation},
            "ticks": newest_live_ticks(conn),
            "schedule": scheduled(conn, settings),
            "bootstrap": {
                "selectable": boot.selectable,
                "queued": boot.queued,
                "loaded": boot.published,
                "rows": boot.rows,
                "pending": boot.pending,
                "not_queued": boot.unqueued,
            },
            "capture": {
                "state": capture.describe,
                "capturing": capture.capturing,
                "enabled": capture.enabled,
                "idle_hours": capture.idle_hours,
                "changed_by": capture.changed_by,
                "changed_at": capture.changed_at.isoformat(timespec="seconds"),
                "relay_seen_at": capture.relay_seen_at.isoformat(timespec="seconds") if capture.relay_seen_at else None,
            },
            "outbox": {
                "unpublished": backlog.entries,
                "keys": backlog.keys,
                "bytes": backlog.bytes,
                "oldest_unpublished_seconds": round(backlog.oldest_seconds, 1),
            },
            "corrections": recompute_backlog(conn),
            "parity": audit_summary(conn, since),
            "history": history(conn),
            "fencing": fencing(conn),
            "relay": None
            if holder is None
            else {
                "application": holder.application,
                "pid": holder.pid,
                "client": holder.client,
                "since": holder.since.isoformat(timespec="seconds"),
            },
        }
    try:
        report["dead_letters"] = {
            "since": since.isoformat(timespec="seconds"),
            "count": count_since(settings, since),
            "error": None,
        }
    except ServiceUnavailable as e:
        report["dead_letters"] = {"since": since.isoformat(timespec="seconds"), "count": None, "error": str(e)}
    return report


def run_status(settings: Settings, since: str, as_json: bool) -> None:
    report = gather(settings, parse_since(since))
    if as_json:
        print(json.dumps(report, indent=2))
        return
    say = lambda text: out.print(text, highlight=False, soft_wrap=True)  # noqa: E731
    if not report["ticks"]:
        say("live ticks: none committed yet")
    for t in report["ticks"]:
        say(
            f"live tick {t['market']} {t['as_of']}: {t['embedded']} embedded, {t['insufficient_history']} without "
            f"enough history, {t['missing_today']} without a row that day; committed on {t['partitions']} of "
            f"{settings.partitions} partitions at {t['committed_at']}"
        )
    for s in report["schedule"]:
        rule = " or ".join(
            filter(
                None,
                [
                    "when complete" if s["when_complete"] else None,
                    f"at {s['deadline']} {s['timezone']}" if s["deadline"] else None,
                ],
            )
        )
        last = s["last"]
        done = (
            "nothing yet"
            if last is None
            else (
                f"last {last['as_of']} ({last['reason']}"
                + (
                    f", {last['instruments']} of {last['expected']} instruments)"
                    if last["reason"] != "baseline"
                    else ")"
                )
            )
        )
        say(f"schedule {s['market']}: ticks {rule}; {done}")
    lay = report["layout"]
    say(
        f"layout: {lay['partitions']} partitions (generation {lay['generation']}, prices topic {settings.prices_topic})"
    )
    b = report["bootstrap"]
    say(
        f"bootstrap: {b['loaded']} of {b['selectable']} ACTIVE EQUITY instruments loaded ({b['rows']:,} rows), "
        f"{b['pending']} waiting for the relay, {b['not_queued']} not queued yet"
    )
    cap = report["capture"]
    say(
        f"capture: {cap['state']} since {cap['changed_at']}"
        + (f" (by {cap['changed_by']})" if cap["changed_by"] else "")
    )
    o = report["outbox"]
    oldest = f", oldest waiting {o['oldest_unpublished_seconds']:.0f} s" if o["unpublished"] else ""
    say(
        f"outbox: {o['unpublished']} unpublished entries ({o['keys']:,} captured keys), "
        f"{o['bytes'] / 1e6:.1f} MB on disk{oldest}"
    )
    c = report["corrections"]
    say(
        f"corrections: {c['queued']} captured change(s) queued for the stored embeddings they reach"
        + (f", oldest from {c['oldest_queued']}" if c["oldest_queued"] else "")
    )
    p = report["parity"]
    say(
        f"parity audit since {p['since']}: {p['keys_checked']:,} stored keys checked in {p['rounds']} round(s), "
        f"{p['mismatches']} mismatch(es)" + (f", last round {p['last_round']}" if p["last_round"] else "")
    )
    for e in p["examples"]:
        say(f"  {e['kind']} {e['entity_id']} {e['as_of_date']} {e['model_id']} (window {e['window_days']})")
    h = report["history"]
    say(
        f"history: {'on' if h['enabled'] else 'OFF'}, {h['versions']:,} superseded embeddings kept, exact as known "
        f"at any instant from {h['complete_since']}"
    )
    for day, causes in h["revised_by_day"].items():
        say(f"  revised {day}: " + ", ".join(f"{n:,} by {cause}" for cause, n in sorted(causes.items())))
    f = report["fencing"]
    refused = sum(n for writers in f["refused_by_day"].values() for n in writers.values())
    say(
        f"fencing: relay round {f['relay_round']}; {refused:,} write(s) refused in the last week "
        "(the table held them computed from newer prices)"
    )
    for day, writers in f["refused_by_day"].items():
        say(f"  refused {day}: " + ", ".join(f"{n:,} from {w}" for w, n in sorted(writers.items())))
    r = report["relay"]
    say(
        "relay: no worker holds the relay lock (captured rows and ticks wait in the outbox)"
        if r is None
        else f"relay: {r['application']} (pid {r['pid']} at {r['client'] or 'local socket'}, since {r['since']})"
    )
    d = report["dead_letters"]
    say(
        f"dead letters since {d['since']}: "
        + (str(d["count"]) if d["error"] is None else f"unknown ({d['error']})")
        + (" (embedder dead-letters lists them)" if d["count"] else "")
    )
