"""Reading the table for the platform's consumers: the embeddings now, or exactly as known at an instant.

`read_embeddings` returns ids, dates and a float32 matrix (`Embeddings`; `.to_pandas()` for a
DataFrame). With `known_at=T` it returns what `numeric_window_embeddings` held at T: each key's
current row where it has been current since T or before, else the version that was current at T
(`numeric_window_embedding_versions`, kept by the triggers of migration 0012 whatever wrote the
table). Times compare with the writing transactions' start times: a write in flight at T counts as
done. Rows are ordered by as_of date, then instrument id (the database's collation).

Rows are read with Apache Arrow's ADBC PostgreSQL driver (binary COPY straight into Arrow record
batches, streamed: memory is one batch), at about the speed of a plain `COPY ... TO`; the same
batches feed `embedder embeddings export` (`iter_batches`) and these arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from shared.contract.errors import BadArguments, EmbedderError, ServiceUnavailable
from shared.contract.models import validate_models
from shared.store.db import one
from shared.store.embedding_history import check_known_at
from shared.store.embedding_store import ENTITY_TYPE
from shared.store.instruments import market_cut

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

SMALL_READ_ROWS = 20_000
"""Reads of at most this many rows (instruments x calendar days) go through psycopg, larger ones through ADBC."""
BATCH_COLUMNS = ["instrument_id", "as_of_date", "window_days", "vector"]
VERSIONS = "numeric_window_embedding_versions"


@dataclass(frozen=True)
class EmbeddingQuery:
    """A validated read: one model, a date range, optionally instruments and a window, now or as known at."""

    model_id: str
    date_from: date
    date_to: date
    instrument_ids: tuple[str, ...] | None = None
    window_days: int | None = None
    known_at: datetime | None = None

    @classmethod
    def build(
        cls,
        model_id: str,
        *,
        as_of: date | str | None = None,
        date_from: date | str | None = None,
        date_to: date | str | None = None,
        window_days: int | None = None,
        known_at: datetime | str | None = None,
        instrument_ids: Sequence[str] | None = None,
    ) -> EmbeddingQuery:
        """Checks the arguments (BadArguments: one line, nothing read)."""
        validate_models([model_id])
        if as_of is not None and (date_from is not None or date_to is not None):
            raise BadArguments("give as_of or a date range (date_from, date_to), not both")
        if as_of is not None:
            lo = hi = to_date(as_of, "as_of")
        elif date_from is not None and date_to is not None:
            lo, hi = to_date(date_from, "date_from"), to_date(date_to, "date_to")
            if lo > hi:
                raise BadArguments(f"the date range is upside down: {lo} is after {hi}")
        else:
            raise BadArguments("give as_of, or both date_from and date_to")
        if window_days is not None and not 1 <= window_days <= 2000:
            raise BadArguments(f"window_days must be between 1 and 2000, got {window_days}")
        when = to_instant(known_at) if known_at is not None else None
        if when is not None and when > datetime.now(UTC):
            raise BadArguments(f"known_at {when.isoformat()} is in the future")
        ids = tuple(instrument_ids) if instrument_ids is not None else None
        return cls(model_id, lo, hi, ids, window_days, when)


def to_date(value: date | str, name: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise BadArguments(f"{name}: not a date (YYYY-MM-DD): {value!r}") from None


def to_instant(value: datetime | date | str) -> datetime:
    """An aware instant; a naive time or a bare date is taken as UTC."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, date):
        when = datetime(value.year, value.month, value.day)
    else:
        try:
            when = datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise BadArguments(f"known_at: not a time (ISO 8601, e.g. 2026-11-23T17:00:00Z): {value!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Embeddings:
    """Embeddings of one model: row k is `instrument_ids[k]` as of `as_of_dates[k]`, its vector
    `vectors[k]` (float32, the stored bytes exactly), of window `window_days[k]`."""

    model_id: str
    instrument_ids: np.ndarray
    as_of_dates: np.ndarray
    window_days: np.ndarray
    vectors: np.ndarray
    known_at: datetime | None = None

    def __len__(self) -> int:
        return len(self.instrument_ids)

    def to_pandas(self) -> pd.DataFrame:
        """A DataFrame indexed by (instrument_id, as_of_date), one float32 column per vector element."""
        import pandas as pd

        index = pd.MultiIndex.from_arrays(
            [self.instrument_ids, self.as_of_dates], names=["instrument_id", "as_of_date"]
        )
        return pd.DataFrame(self.vectors, index=index, copy=False)

    @classmethod
    def from_batch(cls, batch: pa.RecordBatch, model_id: str, known_at: datetime | None) -> Embeddings:
        """One of `iter_batches`' record batches as arrays (the vectors without a copy)."""
        vectors = batch.column(3)
        dim = vectors.type.list_size
        return cls(
            model_id,
            batch.column(0).to_numpy(zero_copy_only=False),
            batch.column(1).to_numpy(zero_copy_only=False).astype("datetime64[D]"),
            batch.column(2).to_numpy(zero_copy_only=False).astype(np.int32),
            vectors.values.to_numpy(zero_copy_only=False).reshape(len(batch), dim),
            known_at,
        )

    @classmethod
    def concat(cls, parts: Sequence[Embeddings], model_id: str, known_at: datetime | None) -> Embeddings:
        parts = [p for p in parts if len(p)]
        if len({p.vectors.shape[1] for p in parts}) > 1:
            raise EmbedderError(
                f"the rows have vectors of different lengths {sorted({p.vectors.shape[1] for p in parts})} "
                "(different window_days): read one window at a time (window_days=...)"
            )
        if not parts:
            return cls(model_id, *fields(empty(model_id)), known_at)
        return cls(
            model_id,
            np.concatenate([p.instrument_ids for p in parts]),
            np.concatenate([p.as_of_dates for p in parts]),
            np.concatenate([p.window_days for p in parts]),
            np.concatenate([p.vectors for p in parts]),
            known_at,
        )


def empty(model_id: str) -> Embeddings:
    return Embeddings(
        model_id,
        np.empty(0, dtype=object),
        np.empty(0, dtype="datetime64[D]"),
        np.empty(0, dtype=np.int32),
        np.empty((0, 0), dtype="<f4"),
    )


def fields(e: Embeddings) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return e.instrument_ids, e.as_of_dates, e.window_days, e.vectors


def read_embeddings(
    model_id: str,
    *,
    as_of: date | str | None = None,
    date_from: date | str | None = None,
    date_to: date | str | None = None,
    instruments: Sequence[str] | None = None,
    market_id: str | None = None,
    window_days: int | None = None,
    known_at: datetime | str | None = None,
    database_url: str | None = None,
) -> Embeddings:
    """The stored embeddings of `model_id` at `as_of` (or from `date_from` to `date_to`), of `instruments`
    or of a market's ACTIVE EQUITY instruments (`market_id`; neither: every instrument), as they are now
    or, with `known_at`, exactly as the table held them then. `database_url` defaults to the settings'
    (`DATABASE_URL`)."""
    url = database_url or default_database_url()
    query = resolve(
        url,
        EmbeddingQuery.build(
            model_id,
            as_of=as_of,
            date_from=date_from,
            date_to=date_to,
            window_days=window_days,
            known_at=known_at,
            instrument_ids=instruments,
        ),
        market_id,
    )
    return Embeddings.concat(
        [Embeddings.from_batch(b, model_id, query.known_at) for b in iter_batches(url, query)], model_id, query.known_at
    )


def read_embeddings_frame(model_id: str, **selection: Any) -> pd.DataFrame:
    """`read_embeddings(...).to_pandas()`."""
    return read_embeddings(model_id, **selection).to_pandas()


def default_database_url() -> str:
    from shared.contract.config import load_settings

    return load_settings().database_url


def resolve(database_url: str, query: EmbeddingQuery, market_id: str | None) -> EmbeddingQuery:
    """The query with a market cut into its instruments (in the database's order), and a `known_at` the
    versions kept can answer (else BadArguments)."""
    if market_id is not None and query.instrument_ids is not None:
        raise BadArguments("give instruments or market_id, not both")
    if market_id is None and query.known_at is None:
        return query
    from shared.store.db import connection

    with connection(database_url) as conn:
        if query.known_at is not None:
            check_known_at(conn, query.known_at)
        if market_id is None:
            return query
        return EmbeddingQuery(
            query.model_id,
            query.date_from,
            query.date_to,
            tuple(market_cut(conn, market_id)),
            query.window_days,
            query.known_at,
        )


def filters(alias: str, query: EmbeddingQuery) -> tuple[str, dict[str, Any]]:
    """WHERE conditions of `query` on a table aliased `alias` (the live table or the versions)."""
    sql = [
        f"{alias}.entity_type = '{ENTITY_TYPE}'",
        f"{alias}.model_id = %(model)s",
        f"{alias}.as_of_date BETWEEN %(lo)s AND %(hi)s",
    ]
    params: dict[str, Any] = {"model": query.model_id, "lo": query.date_from, "hi": query.date_to}
    if query.instrument_ids is not None:
        sql.append(f"{alias}.entity_id = ANY(%(ids)s)")
        params["ids"] = list(query.instrument_ids)
    if query.window_days is not None:
        sql.append(f"({alias}.window_spec->>'window_days')::int = %(window)s")
        params["window"] = query.window_days
    return " AND ".join(sql), params


def select_sql(query: EmbeddingQuery, ordered: bool = True) -> tuple[str, dict[str, Any]]:
    """The SELECT of (entity_id, as_of_date, window_days, vector) for `query`, in read order (`ordered`)."""
    where_e, params = filters("e", query)
    columns = "e.entity_id, e.as_of_date, (e.window_spec->>'window_days')::int4 AS window_days, e.vector"
    order = " ORDER BY 2, 1" if ordered else ""
    if query.known_at is None:
        return f"SELECT {columns} FROM numeric_window_embeddings e WHERE {where_e}{order}", params
    where_v, _ = filters("v", query)
    params["t"] = query.known_at
    return (
        f"""
        SELECT entity_id, as_of_date, window_days, vector FROM (
            SELECT {columns} FROM numeric_window_embeddings e
            LEFT JOIN (SELECT v.entity_id, v.as_of_date, max(v.recorded_to) AS since FROM {VERSIONS} v
                       WHERE {where_v} GROUP BY 1, 2) s ON s.entity_id = e.entity_id AND s.as_of_date = e.as_of_date
            WHERE {where_e} AND greatest(e.created_at, s.since) <= %(t)s
            UNION ALL
            SELECT v.entity_id, v.as_of_date, (v.window_spec->>'window_days')::int4, v.vector FROM {VERSIONS} v
            WHERE {where_v} AND v.change <> 'absent' AND v.recorded_from <= %(t)s AND v.recorded_to > %(t)s
        ) k{order}""",
        params,
    )


def iter_batches(database_url: str, query: EmbeddingQuery) -> Iterator[pa.RecordBatch]:
    """`query`'s rows as Arrow record batches in read order: instrument_id (string), as_of_date (date32),
    window_days (int32), vector (fixed-size list of float32, the stored bytes). Rows without a vector (a
    platform row holding only a `vector_ref`) are skipped; vectors of different lengths (windows) in one
    read are an error naming the fix."""
    if (
        query.instrument_ids is not None
        and len(query.instrument_ids) * ((query.date_to - query.date_from).days + 1) <= SMALL_READ_ROWS
    ):
        yield from small_read(database_url, query)
        return
    import adbc_driver_postgresql.dbapi as adbc
    from adbc_driver_manager import Error as AdbcError

    text = render(*select_sql(query, ordered=False))
    try:
        conn = adbc.connect(database_url)
    except AdbcError as e:
        from shared.contract.config import redact_url, scrub_secret

        raise ServiceUnavailable(
            f"cannot connect to PostgreSQL at {redact_url(database_url)}: "
            f"{scrub_secret(str(e).splitlines()[0], database_url)}"
        ) from None
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM ({text}) r WHERE r.vector IS NOT NULL ORDER BY r.as_of_date, r.entity_id")
            for batch in cur.fetch_record_batch():
                if batch.num_rows:
                    yield with_fixed_vectors(batch)
    finally:
        conn.close()


def small_read(database_url: str, query: EmbeddingQuery) -> Iterator[pa.RecordBatch]:
    """A read of at most `SMALL_READ_ROWS` rows (one as_of over a market) as one batch, through psycopg: the
    ADBC driver's connection set-up (~50 ms: it loads the server's type catalog) would cost more than
    the read."""
    import pyarrow as pa

    from shared.store.db import connection

    sql, params = select_sql(query)
    with connection(database_url) as conn, conn.cursor(binary=True) as cur:
        rows = [r for r in cur.execute(sql, params) if r[3] is not None]
    if not rows:
        return
    ids, days, windows, vectors = zip(*rows)
    lengths = {len(v) for v in vectors}
    if len(lengths) > 1:
        raise EmbedderError(
            f"the rows have vectors of different lengths ({min(lengths) // 4} and "
            f"{max(lengths) // 4}: different window_days): read one window at a time "
            "(window_days=...)"
        )
    dim = lengths.pop() // 4
    values = pa.array(np.frombuffer(b"".join(vectors), dtype="<f4"), pa.float32())
    yield pa.RecordBatch.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.array(days, pa.date32()),
            pa.array(windows, pa.int32()),
            pa.FixedSizeListArray.from_arrays(values, dim),
        ],
        names=BATCH_COLUMNS,
    )


def render(sql: str, params: dict[str, Any]) -> str:
    """`sql` with its parameters quoted in (psycopg's client-side quoting), for a driver taking text."""
    from psycopg.adapt import Transformer

    tx = Transformer()
    quoted = {k: tx.as_literal(v).decode() for k, v in params.items()}
    return sql % quoted if quoted else sql


def with_fixed_vectors(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with its bytea vectors as fixed-size lists of float32 (zero-copy over the same bytes)."""
    import pyarrow as pa

    vectors = batch.column(3)
    offsets = np.frombuffer(vectors.buffers()[1], dtype=np.int32)[vectors.offset : vectors.offset + len(vectors) + 1]
    lengths = np.diff(offsets)
    if lengths.size and (lengths.min() != lengths.max() or lengths[0] % 4):
        raise EmbedderError(
            f"the rows have vectors of different lengths ({lengths.min() // 4} and "
            f"{lengths.max() // 4}: different window_days): read one window at a time "
            "(window_days=...)"
        )
    dim = int(lengths[0]) // 4 if lengths.size else 0
    data = vectors.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    values = pa.Array.from_buffers(pa.float32(), len(vectors) * dim, [None, data])
    return pa.RecordBatch.from_arrays(
        [
            batch.column(0).cast(pa.string()),
            batch.column(1),
            batch.column(2),
            pa.FixedSizeListArray.from_arrays(values, dim),
        ],
        names=BATCH_COLUMNS,
    )


def count_at(conn: psycopg.Connection, as_of: date, model_id: str) -> int:
    """Rows stored for (as_of, model), every entity type."""
    return one(
        conn.execute(
            "SELECT count(*) FROM numeric_window_embeddings WHERE as_of_date = %s AND model_id = %s", (as_of, model_id)
        )
    )[0]


def first_at(conn: psycopg.Connection, as_of: date, model_id: str) -> tuple | None:
    """The first row (by entity id) stored for (as_of, model): (entity_id, window_spec, vector), or None."""
    return conn.execute(
        """SELECT entity_id, window_spec, vector FROM numeric_window_embeddings
           WHERE as_of_date = %s AND model_id = %s ORDER BY entity_id LIMIT 1""",
        (as_of, model_id),
    ).fetchone()
