"""Helpers shared by the database-backed tests."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import psycopg

from backfill.price_import import import_prices
from backfill.synthetic import write_synthetic_csv
from tests.support.reference import reference_embedding


def load_synthetic(
    url: str,
    tmp_path: Path,
    instruments: int = 20,
    start: date = date(2019, 1, 1),
    end: date = date(2019, 12, 31),
    seed: int = 3,
) -> None:
    path = tmp_path / "synthetic.csv.gz"
    write_synthetic_csv(path, instruments, start, end, seed)
    import_prices(url, [path])


def stored(url: str) -> dict[tuple, bytes]:
    """(entity_id, as_of_date, model_id) -> vector bytes of every stored embedding."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT entity_id, as_of_date, model_id, vector, window_spec FROM numeric_window_embeddings"
        ).fetchall()
    return {(e, d, m): bytes(v) for e, d, m, v, _ in rows}


def expected(
    url: str, instrument_ids: list[str], as_of_dates: list[date], window_days: int, model_ids: list[str]
) -> dict[tuple, bytes]:
    """SPEC section 3 by the plain-loop reference over what prices_daily holds now."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT instrument_id, trade_date, close, volume FROM prices_daily WHERE instrument_id = ANY(%s)",
            (instrument_ids,),
        ).fetchall()
    return expected_from_rows(rows, instrument_ids, as_of_dates, window_days, model_ids)


def expected_from_rows(
    rows, instrument_ids: list[str], as_of_dates: list[date], window_days: int, model_ids
) -> dict[tuple, bytes]:
    """SPEC section 3 by the plain-loop reference over `rows` (instrument_id, trade_date, close, volume)."""
    by_id: dict[str, list] = {}
    for i, d, c, v in rows:
        by_id.setdefault(i, []).append((d, c, v))
    out = {}
    for i in instrument_ids:
        for d in as_of_dates:
            for m in model_ids:
                vec = reference_embedding(by_id.get(i, []), d, window_days, m)
                if vec is not None:
                    out[(i, d, m)] = vec
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3) -> None:
    """Poll `predicate` until true; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def assert_same_embeddings(got: dict[tuple, bytes], want: dict[tuple, bytes], url: str | None = None) -> None:
    """Equality of two stored-embedding maps, reported compactly (pytest's diff of thousands of
    byte strings takes minutes). With `url` (where `got` was read), a failure also shows the
    stored window_spec and write time of a few differing rows."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if not (missing or extra or differ):
        return
    details = ""
    if url and differ:
        with psycopg.connect(url) as conn:
            details = "; stored: " + ", ".join(
                str(
                    conn.execute(
                        """SELECT entity_id, as_of_date, window_spec, created_at FROM numeric_window_embeddings
                   WHERE entity_id = %s AND as_of_date = %s AND model_id = %s""",
                        k,
                    ).fetchone()
                )
                for k in differ[:3]
            )
    raise AssertionError(
        f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]}), "
        f"{len(differ)} with other bytes (e.g. {differ[:3]}) of {len(want)} expected{details}"
    )
