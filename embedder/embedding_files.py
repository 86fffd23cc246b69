"""Writing embeddings to files a research notebook opens: Parquet, NumPy .npy, CSV, chunk by chunk.

Each keeps the stored float32 values exactly: Parquet as a fixed-size list of float32 per row, .npy as
one structured array (instrument_id, as_of_date, window_days, vector) that `np.load` opens without
pickle, CSV as one column per element with 9 significant digits (enough to round-trip float32).
A writer writes to a temporary file beside the target and renames it at the end: nothing is
half-written.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from shared.embedding_reads import Embeddings

if TYPE_CHECKING:
    import pyarrow as pa
from shared.errors import EmbedderError

FORMATS = ("parquet", "npy", "csv")
PARQUET_OPTIONS = dict(compression="snappy", use_dictionary=["instrument_id"],
                       write_statistics=["instrument_id", "as_of_date", "window_days"])
"""No dictionary or statistics for the vectors: on float32 data they cost more than the rest of the write
(a year of the market: 0.79 s against 0.34 s, for a file of 53 MB instead of 95)."""
ID_CHARS = 64  # numeric_window_embeddings.entity_id is varchar(64)


def npy_dtype(dim: int) -> np.dtype:
    return np.dtype([("instrument_id", f"<U{ID_CHARS}"), ("as_of_date", "<M8[D]"), ("window_days", "<i4"),
                     ("vector", "<f4", (dim,))])


def write_embeddings(batches: Iterable["pa.RecordBatch"], path: Path, fmt: str, model_id: str,
                     rows: int | None = None, on_rows: Callable[[int], None] | None = None,
                     metadata: dict[str, str] | None = None) -> int:
    """Write `batches` (`shared.embedding_reads.iter_batches`) to `path` in `fmt`; `rows` (the total) is
    needed for npy. Returns rows written."""
    tmp = path.with_name(f".{path.name}.partial")
    if fmt == "parquet":
        writer = lambda: _parquet(batches, tmp, rows, on_rows, metadata or {})  # noqa: E731
    else:
        chunks = (Embeddings.from_batch(b, model_id, None) for b in batches)
        writer = lambda: {"npy": _npy, "csv": _csv}[fmt](chunks, tmp, rows, on_rows, metadata or {})  # noqa: E731
    try:
        written = writer()
        os.replace(tmp, path)
        return written
    finally:
        tmp.unlink(missing_ok=True)


def _dim(chunk: Embeddings, dim: int | None) -> int:
    if dim is not None and chunk.vectors.shape[1] != dim:
        raise EmbedderError(f"the rows have vectors of different lengths ({dim} and {chunk.vectors.shape[1]}: "
                            "different window_days): export one window at a time (--window-days)")
    return chunk.vectors.shape[1]


def _parquet(batches, tmp: Path, rows, on_rows, metadata) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, dim, n = None, None, 0
    meta = {k.encode(): v.encode() for k, v in metadata.items()}
    try:
        for batch in batches:
            size = batch.column(3).type.list_size
            if dim is not None and size != dim:
                raise EmbedderError(f"the rows have vectors of different lengths ({dim} and {size}: different "
                                    "window_days): export one window at a time (--window-days)")
            dim = size
            if writer is None:
                writer = pq.ParquetWriter(tmp, batch.schema.with_metadata(meta), **PARQUET_OPTIONS)
            writer.write_batch(batch)
            n += batch.num_rows
            if on_rows:
                on_rows(batch.num_rows)
        if writer is None:  # nothing selected: an empty file with the columns
            writer = pq.ParquetWriter(tmp, pa.schema([("instrument_id", pa.string()), ("as_of_date", pa.date32()),
                                                      ("window_days", pa.int32()),
                                                      ("vector", pa.list_(pa.float32()))], metadata=meta))
    finally:
        if writer is not None:
            writer.close()
    return n


def _npy(chunks, tmp: Path, rows, on_rows, metadata) -> int:
    if rows is None:
        raise ValueError("an .npy file needs the row count before it is written")
    out, dim, n = None, None, 0
    for chunk in chunks:
        if not len(chunk):
            continue
        dim = _dim(chunk, dim)
        if out is None:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=npy_dtype(dim), shape=(rows,))
        k = len(chunk)
        if n + k > rows:
            raise EmbedderError("the table changed during the export (more rows than counted): run it again")
        part = out[n:n + k]
        part["instrument_id"] = chunk.instrument_ids
        part["as_of_date"] = chunk.as_of_dates
        part["window_days"] = chunk.window_days
        part["vector"] = chunk.vectors
        n += k
        if on_rows:
            on_rows(k)
    if out is None:
        with open(tmp, "wb") as f:  # nothing selected: an empty array of the row type
            np.save(f, np.empty(0, dtype=npy_dtype(0)), allow_pickle=False)
        return 0
    out.flush()
    del out
    if n != rows:
        raise EmbedderError("the table changed during the export (fewer rows than counted): run it again")
    return n


def _csv(chunks, tmp: Path, rows, on_rows, metadata) -> int:
    n, dim = 0, None
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        for chunk in chunks:
            if not len(chunk):
                continue
            if dim is None:
                f.write(",".join(["instrument_id", "as_of_date", "model_id", "window_days"]
                                 + [f"v{k}" for k in range(chunk.vectors.shape[1])]) + "\n")
            dim = _dim(chunk, dim)
            keys = [f"{_csv_field(i)},{d},{chunk.model_id},{w}" for i, d, w in
                    zip(chunk.instrument_ids, chunk.as_of_dates.astype(str), chunk.window_days)]
            values = np.char.mod("%.9g", chunk.vectors.astype(np.float64))
            f.writelines(f"{k},{','.join(v)}\n" for k, v in zip(keys, values))
            n += len(chunk)
            if on_rows:
                on_rows(len(chunk))
        if dim is None:
            f.write("instrument_id,as_of_date,model_id,window_days\n")
    return n


def _csv_field(value: str) -> str:
    return f'"{value.replace(chr(34), chr(34) * 2)}"' if any(c in value for c in ',"\n\r') else value
