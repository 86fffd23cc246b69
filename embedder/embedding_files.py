"""Writing embeddings to files a research notebook opens: Parquet, NumPy .npy, CSV, chunk by chunk.

Each keeps the stored float32 values exactly: Parquet as a fixed-size list of float32 per row, .npy as
one structured array (instrument_id, as_of_date, window_days, vector) that `np.load` opens without
pickle, CSV as one column per element with 9 significant digits (enough to round-trip float32).
A writer writes to a temporary file beside the target and renames it at the end: nothing is
half-written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.store.embedding_reads import Embeddings

if TYPE_CHECKING:
    import pyarrow as pa
from shared.contract.errors import EmbedderError

FORMATS = ("parquet", "npy", "csv")
PARQUET_OPTIONS = dict(
    compression="snappy",
    use_dictionary=["instrument_id"],
    write_statistics=["instrument_id", "as_of_date", "window_days"],
)
"""No dictionary or statistics for the vectors: on float32 data they cost more than the rest of the write
(a year of the market: 0.79 s against 0.34 s, for a file of 53 MB instead of 95)."""
ID_CHARS = 64  # numeric_window_embeddings.entity_id is varchar(64)


def npy_dtype(dim: int) -> np.dtype:
    return np.dtype(
        [
            ("instrument_id", f"<U{ID_CHARS}"),
            ("as_of_date", "<M8[D]"),
            ("window_days", "<i4"),
            ("vector", "<f4", (dim,)),
        ]
    )


def write_embeddings(
    batches: Iterable[pa.RecordBatch],
    path: Path,
    fmt: str,
    model_id: str,
    on_rows: Callable[[int], None] | None = None,
    metadata: dict[str, str] | None = None,
) -> int:
    """Write `batches` (`shared.store.embedding_reads.iter_batches`) to `path` in `fmt`, streaming (memory: one
    batch). Returns rows written."""
    tmp = path.with_name(f".{path.name}.partial")
    if fmt == "parquet":
        writer = lambda: _parquet(batches, tmp, on_rows, metadata or {})  # noqa: E731
    else:
        chunks = (Embeddings.from_batch(b, model_id, None) for b in batches)
        writer = lambda: {"npy": _npy, "csv": _csv}[fmt](chunks, tmp, on_rows, metadata or {})  # noqa: E731
    try:
        written = writer()
        os.replace(tmp, path)
        return written
    finally:
        tmp.unlink(missing_ok=True)


def _dim(chunk: Embeddings, dim: int | None) -> int:
    if dim is not None and chunk.vectors.shape[1] != dim:
        raise EmbedderError(
            f"the rows have vectors of different lengths ({dim} and {chunk.vectors.shape[1]}: "
            "different window_days): export one window at a time (--window-days)"
        )
    return chunk.vectors.shape[1]


def _parquet(batches, tmp: Path, on_rows, metadata) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, dim, n = None, None, 0
    meta = {k.encode(): v.encode() for k, v in metadata.items()}
    try:
        for batch in batches:
            size = batch.column(3).type.list_size
            if dim is not None and size != dim:
                raise EmbedderError(
                    f"the rows have vectors of different lengths ({dim} and {size}: different "
                    "window_days): export one window at a time (--window-days)"
                )
            dim = size
            if writer is None:
                writer = pq.ParquetWriter(tmp, batch.schema.with_metadata(meta), **PARQUET_OPTIONS)
            writer.write_batch(batch)
            n += batch.num_rows
            if on_rows:
                on_rows(batch.num_rows)
        if writer is None:  # nothing selected: an empty file with the columns
            writer = pq.ParquetWriter(
                tmp,
                pa.schema(
                    [
                        ("instrument_id", pa.string()),
                        ("as_of_date", pa.date32()),
                        ("window_days", pa.int32()),
                        ("vector", pa.list_(pa.float32())),
                    ],
                    metadata=meta,
                ),
            )
    finally:
        if writer is not None:
            writer.close()
    return n


NPY_HEADER_BYTES = 512
"""The .npy header is written last (its shape is known only then) into room kept for it: the format pads
its header with spaces, and 512 bytes hold any row type here while keeping the data 64-byte aligned."""


def npy_header(dtype: np.dtype, rows: int) -> bytes:
    """A version 1.0 .npy header for `rows` records of `dtype`, padded to NPY_HEADER_BYTES."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows,)})
    body = text.encode("latin1").ljust(NPY_HEADER_BYTES - 10 - 1) + b"\n"
    return np.lib.format.magic(1, 0) + len(body).to_bytes(2, "little") + body


def _npy(chunks, tmp: Path, on_rows, metadata) -> int:
    dtype, n = None, 0
    with open(tmp, "wb") as f:
        f.write(b"\0" * NPY_HEADER_BYTES)
        for chunk in chunks:
            if not len(chunk):
                continue
            dim = _dim(chunk, None if dtype is None else dtype["vector"].shape[0])
            dtype = dtype or npy_dtype(dim)
            part = np.empty(len(chunk), dtype=dtype)
            part["instrument_id"] = chunk.instrument_ids
            part["as_of_date"] = chunk.as_of_dates
            part["window_days"] = chunk.window_days
            part["vector"] = chunk.vectors
            f.write(part.tobytes())
            n += len(chunk)
            if on_rows:
                on_rows(len(chunk))
        f.seek(0)
        f.write(npy_header(dtype or npy_dtype(0), n))
    return n


def _csv(chunks, tmp: Path, on_rows, metadata) -> int:
    n, dim = 0, None
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        for chunk in chunks:
            if not len(chunk):
                continue
            if dim is None:
                f.write(
                    ",".join(
                        ["instrument_id", "as_of_date", "model_id", "window_days"]
                        + [f"v{k}" for k in range(chunk.vectors.shape[1])]
                    )
                    + "\n"
                )
            dim = _dim(chunk, dim)
            keys = [
                f"{_csv_field(i)},{d},{chunk.model_id},{w}"
                for i, d, w in zip(chunk.instrument_ids, chunk.as_of_dates.astype(str), chunk.window_days)
            ]
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
