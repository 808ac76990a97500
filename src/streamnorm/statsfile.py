"""The on-disk format of one split's statistics: a small, self-describing Parquet file.

Long format, one row per feature, in feature order:

============== ====================== ==========================================
column         type                   content
============== ====================== ==========================================
feature        string                 feature name
feature_index  int32                  0 .. F-1
count          int64                  values that entered the statistics
nan_count      int64                  non-finite values met
mean, m2       float64                mean, sum of squared deviations
min, max       float64                extremes (NaN for an empty feature)
histogram      list<int64>            256 exact counts (8-bit input), else null
int_sum        decimal128(38, 0)      exact sum of integer input, else null
int_sumsq      decimal128(38, 0)      exact sum of squares, else null
============== ====================== ==========================================

File key-value metadata: ``streamnorm.format_version``, ``streamnorm.version``,
``layout``, ``dtype``, ``split``, ``created_at`` (ISO 8601, UTC) and, when
known, ``source`` (JSON). Floats are stored without dictionary encoding, so
every bit (NaN payloads, ``-0.0``) survives. Nothing is pickled and nothing in
a file is evaluated: reading one is decoding Parquet and checking values.

The functions here are filesystem-free (bytes and tables in, bytes and tables
out) so that any module can reuse the format; :mod:`streamnorm.store` adds
paths, fsspec and atomic writes.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._version import __version__
from .errors import StatsFileError, StreamnormError
from .layout import parse_layout
from .stats import HISTOGRAM_BINS, Stats

__all__ = [
    "FORMAT_VERSION",
    "SCHEMA",
    "file_metadata",
    "stats_from_bytes",
    "stats_to_bytes",
    "stats_to_table",
    "table_to_stats",
]

#: Version of the on-disk format this code writes and the newest it reads.
FORMAT_VERSION = 1

META_FORMAT_VERSION = "streamnorm.format_version"
META_VERSION = "streamnorm.version"
META_LAYOUT = "layout"
META_DTYPE = "dtype"
META_SPLIT = "split"
META_CREATED_AT = "created_at"
META_SOURCE = "source"

EXACT_TYPE = pa.decimal128(38, 0)
_EXACT_LIMIT = 10**38  # decimal128(38, 0) holds |v| < 10**38
_DECIMAL_COLUMNS = ("int_sum", "int_sumsq")

SCHEMA = pa.schema(
    [
        pa.field("feature", pa.string(), nullable=False),
        pa.field("feature_index", pa.int32(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("nan_count", pa.int64(), nullable=False),
        pa.field("mean", pa.float64(), nullable=False),
        pa.field("m2", pa.float64(), nullable=False),
        pa.field("min", pa.float64(), nullable=False),
        pa.field("max", pa.float64(), nullable=False),
        pa.field("histogram", pa.list_(pa.int64()), nullable=True),
        pa.field("int_sum", EXACT_TYPE, nullable=True),
        pa.field("int_sumsq", EXACT_TYPE, nullable=True),
    ]
)

_KNOWN_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64"]
)
_INT_COLUMNS = ("count", "nan_count")
_FLOAT_COLUMNS = ("mean", "m2", "min", "max")


# -- encoding ----------------------------------------------------------------
def _exact_array(values: tuple[int, ...], column: str, names: tuple[str, ...]) -> pa.Array:
    try:
        small = np.array(values, dtype=np.int64)
    except OverflowError:
        small = None
    if small is not None:
        return pa.array(small, type=pa.int64()).cast(EXACT_TYPE)
    chunks = []
    for name, v in zip(names, values):
        if not -_EXACT_LIMIT < v < _EXACT_LIMIT:
            raise StreamnormError(
                f"cannot store the exact {column} of feature {name!r}: it has "
                f"{len(str(abs(v)))} digits and the statistics file holds at most 38; "
                f"split the data into smaller splits and merge them after loading"
            )
        chunks.append(v.to_bytes(16, "little", signed=True))
    return pa.Array.from_buffers(EXACT_TYPE, len(values), [None, pa.py_buffer(b"".join(chunks))])


def _histogram_array(histogram: np.ndarray | None, n: int) -> pa.Array:
    list_type = SCHEMA.field("histogram").type
    if histogram is None:
        return pa.nulls(n, type=list_type)
    offsets = pa.array(np.arange(0, n * HISTOGRAM_BINS + 1, HISTOGRAM_BINS, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(histogram.reshape(-1)), type=list_type)


def _check_values(
    count: np.ndarray,
    nan_count: np.ndarray,
    m2: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    histogram: np.ndarray | None,
    int_sumsq: tuple[int, ...] | None,
    names: tuple[str, ...],
) -> str | None:
    """The first inconsistency in a set of statistics, or None."""

    def first(bad: np.ndarray) -> str:
        return repr(names[int(np.flatnonzero(bad)[0])])

    if (bad := count < 0).any():
        return f"negative count for feature {first(bad)}"
    if (bad := nan_count < 0).any():
        return f"negative nan_count for feature {first(bad)}"
    if (bad := m2 < 0).any():
        return f"negative m2 (sum of squared deviations) for feature {first(bad)}"
    if (bad := (count > 0) & (lo > hi)).any():
        return f"min greater than max for feature {first(bad)}"
    if histogram is not None:
        if (bad := (histogram < 0).any(axis=1)).any():
            return f"negative histogram count for feature {first(bad)}"
        if (bad := histogram.sum(axis=1) != count).any():
            return f"histogram does not sum to count for feature {first(bad)}"
    if int_sumsq is not None and min(int_sumsq, default=0) < 0:
        return f"negative int_sumsq for feature {names[int(np.argmin(int_sumsq))]!r}"
    return None


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def stats_to_table(
    stats: Stats,
    split: str | None = None,
    source: Any = None,
    created_at: str | None = None,
) -> pa.Table:
    """Encode :class:`~streamnorm.Stats` as the stats-file table (schema and metadata).

    Parameters
    ----------
    stats : Stats
    split : str, optional
        Recorded in the ``split`` metadata key.
    source : JSON-serializable, optional
        Description of the input (see :func:`streamnorm.fsutil.describe_sources`).
    created_at : str, optional
        ISO 8601 timestamp; now (UTC) by default.

    Raises
    ------
    StreamnormError
        When ``stats`` is not a Stats, is inconsistent (a file made from it
        would be refused on load), or ``source`` is not JSON-serializable.

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> s = sn.compute_stats([np.arange(6, dtype=np.uint8).reshape(3, 2)], layout="NF")
    >>> t = stats_to_table(s, split="train")
    >>> t.column("mean").to_pylist(), t.schema.metadata[b"split"]
    ([2.0, 3.0], b'train')
    """
    if not isinstance(stats, Stats):
        raise StreamnormError(f"expected streamnorm.Stats, got {type(stats).__name__}")
    names = stats.feature_names
    if not names:
        # With no rows, a file could not tell "no histogram" from "empty histogram".
        raise StreamnormError("cannot save statistics of zero features")
    problem = _check_values(stats.count, stats.nan_count, stats.m2, stats.min, stats.max,
                            stats.histogram, stats.int_sumsq, names)
    if problem is not None:
        raise StreamnormError(f"cannot save inconsistent statistics: {problem}")
    n = len(names)
    try:
        feature = pa.array(names, type=pa.string())
    except (pa.ArrowException, UnicodeError) as exc:
        raise StreamnormError(f"feature names are not valid UTF-8 text: {exc}") from exc
    columns = [
        feature,
        pa.array(np.arange(n, dtype=np.int32)),
        pa.array(stats.count),
        pa.array(stats.nan_count),
        pa.array(stats.mean),
        pa.array(stats.m2),
        pa.array(stats.min),
        pa.array(stats.max),
        _histogram_array(stats.histogram, n),
    ]
    for column in _DECIMAL_COLUMNS:
        values = getattr(stats, column)
        columns.append(pa.nulls(n, type=EXACT_TYPE) if values is None
                       else _exact_array(values, column, names))
    metadata = {
        META_FORMAT_VERSION: str(FORMAT_VERSION),
        META_VERSION: __version__,
        META_LAYOUT: stats.layout,
        META_DTYPE: stats.dtype,
        META_CREATED_AT: created_at or _utc_now(),
    }
    if split is not None:
        metadata[META_SPLIT] = split
    if source is not None:
        try:
            metadata[META_SOURCE] = json.dumps(source, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise StreamnormError(
                f"source must be JSON-serializable (lists, dicts, str, numbers): {exc}"
            ) from exc
    return pa.Table.from_arrays(columns, schema=SCHEMA.with_metadata(metadata))


def stats_to_bytes(
    stats: Stats, split: str | None = None, source: Any = None, created_at: str | None = None
) -> pa.Buffer:
    """The complete stats file for ``stats``, as an in-memory buffer.

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> s = sn.compute_stats([np.ones((4, 3), dtype=np.float32)], layout="NF")
    >>> stats_from_bytes(stats_to_bytes(s)).equals(s)
    True
    """
    table = stats_to_table(stats, split=split, source=source, created_at=created_at)
    sink = pa.BufferOutputStream()
    # No dictionary encoding: it would merge -0.0 with 0.0 and NaN payloads.
    pq.write_table(table, sink, use_dictionary=False, compression="zstd")
    return sink.getvalue()


# -- decoding ----------------------------------------------------------------
def _text_metadata(schema: pa.Schema, where: str) -> dict[str, str]:
    raw = schema.metadata or {}
    try:
        return {k.decode("utf-8"): v.decode("utf-8") for k, v in raw.items()}
    except UnicodeDecodeError as exc:
        raise StatsFileError(f"{where}: metadata is not UTF-8 text ({exc})") from None


def _check_header(meta: dict[str, str], where: str) -> int:
    if META_FORMAT_VERSION not in meta:
        raise StatsFileError(
            f"{where}: not a streamnorm statistics file (no {META_FORMAT_VERSION!r} metadata); "
            f"write it with StatsStore.save"
        )
    raw = meta[META_FORMAT_VERSION]
    try:
        version = int(raw)
    except ValueError:
        raise StatsFileError(f"{where}: bad {META_FORMAT_VERSION} {raw!r}") from None
    if version > FORMAT_VERSION:
        raise StatsFileError(
            f"{where}: written in statistics format {version} (by streamnorm "
            f"{meta.get(META_VERSION, '?')}), but this streamnorm ({__version__}) reads formats "
            f"up to {FORMAT_VERSION}; upgrade streamnorm (pip install -U streamnorm)"
        )
    if version < 1:
        raise StatsFileError(f"{where}: bad {META_FORMAT_VERSION} {raw!r}")
    for key in (META_LAYOUT, META_DTYPE):
        if key not in meta:
            raise StatsFileError(f"{where}: {key!r} metadata is missing")
    if meta[META_DTYPE] not in _KNOWN_DTYPES:
        raise StatsFileError(f"{where}: unknown source dtype {meta[META_DTYPE]!r}")
    try:
        parse_layout(meta[META_LAYOUT])
    except StreamnormError as exc:
        raise StatsFileError(f"{where}: bad layout metadata: {exc}") from None
    return version


def file_metadata(schema: pa.Schema, where: str = "statistics file") -> dict[str, Any]:
    """The key-value metadata of a stats file, checked and decoded.

    Returns
    -------
    dict
        ``format_version`` (int), ``streamnorm_version``, ``layout``, ``dtype``,
        ``split`` (or None), ``created_at`` (or None) and ``source`` (the
        decoded JSON, or None).

    Raises
    ------
    StatsFileError
        For missing or malformed metadata and for a newer format.
    """
    meta = _text_metadata(schema, where)
    version = _check_header(meta, where)
    source = meta.get(META_SOURCE)
    if source is not None:
        try:
            source = json.loads(source)
        except ValueError as exc:
            raise StatsFileError(f"{where}: 'source' metadata is not valid JSON ({exc})") from None
    return {
        "format_version": version,
        "streamnorm_version": meta.get(META_VERSION),
        "layout": meta[META_LAYOUT],
        "dtype": meta[META_DTYPE],
        "split": meta.get(META_SPLIT),
        "created_at": meta.get(META_CREATED_AT),
        "source": source,
    }


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return str(t)


def _check_columns(schema: pa.Schema, where: str) -> None:
    missing = [f.name for f in SCHEMA if f.name not in schema.names]
    if missing:
        raise StatsFileError(
            f"{where}: missing column(s) {missing}; a statistics file has columns {SCHEMA.names}"
        )
    for expected in SCHEMA:
        if schema.get_field_index(expected.name) < 0:
            raise StatsFileError(f"{where}: column {expected.name!r} appears more than once")
        actual = schema.field(expected.name).type
        if expected.name == "feature":
            ok = pa.types.is_string(actual) or pa.types.is_large_string(actual)
        elif expected.name == "histogram":
            ok = (pa.types.is_list(actual) or pa.types.is_large_list(actual)
                  or pa.types.is_fixed_size_list(actual)) and actual.value_type == pa.int64()
        else:
            ok = actual == expected.type
        if not ok:
            raise StatsFileError(
                f"{where}: column {expected.name!r} has type {_type_name(actual)}, expected "
                f"{_type_name(expected.type)}"
            )


def _numpy(table: pa.Table, name: str, where: str) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise StatsFileError(f"{where}: column {name!r} has {column.null_count} null value(s)")
    return column.combine_chunks().to_numpy(zero_copy_only=False)


def _exact_values(arr: pa.Array, name: str, where: str) -> list[int]:
    # decimal128 is 16-byte little-endian two's complement; read the words
    # instead of building one Decimal per row.
    n = len(arr)
    data = arr.buffers()[1]
    words = np.frombuffer(data, dtype="<i8", count=2 * (arr.offset + n)).reshape(-1, 2)
    words = words[arr.offset:]
    lo, hi = words[:, 0], words[:, 1]
    if np.array_equal(hi, lo >> 63):  # every value fits in int64
        return lo.tolist()
    raw = bytes(data)[16 * arr.offset:16 * (arr.offset + n)]
    values = [int.from_bytes(raw[i:i + 16], "little", signed=True) for i in range(0, 16 * n, 16)]
    if any(not -_EXACT_LIMIT < v < _EXACT_LIMIT for v in values):
        raise StatsFileError(f"{where}: column {name!r} holds a value beyond 38 digits")
    return values


def _exact_column(table: pa.Table, name: str, where: str) -> tuple[int, ...] | None:
    column = table.column(name)
    if column.null_count == len(column):
        return None
    if column.null_count:
        raise StatsFileError(
            f"{where}: column {name!r} is null for some features only (it must be null for "
            f"all features or for none)"
        )
    return tuple(_exact_values(column.combine_chunks(), name, where))


def _histogram_column(table: pa.Table, where: str) -> np.ndarray | None:
    column = table.column("histogram")
    n = len(column)
    if column.null_count == n:
        return None
    if column.null_count:
        raise StatsFileError(
            f"{where}: column 'histogram' is null for some features only (it must be null for "
            f"all features or for none)"
        )
    arr = column.combine_chunks()
    if pa.types.is_fixed_size_list(arr.type):
        if arr.type.list_size != HISTOGRAM_BINS:
            raise StatsFileError(
                f"{where}: histogram lists have {arr.type.list_size} entries, expected "
                f"{HISTOGRAM_BINS}"
            )
    else:
        lengths = np.diff(arr.offsets.to_numpy())
        if n and (bad := lengths != HISTOGRAM_BINS).any():
            i = int(np.flatnonzero(bad)[0])
            raise StatsFileError(
                f"{where}: histogram of row {i} has {int(lengths[i])} entries, expected "
                f"{HISTOGRAM_BINS}"
            )
    values = arr.flatten()
    if values.null_count:
        raise StatsFileError(f"{where}: histogram holds null counts")
    return values.to_numpy().reshape(n, HISTOGRAM_BINS)


def table_to_stats(table: pa.Table, where: str = "statistics file") -> Stats:
    """Decode a stats-file table into :class:`~streamnorm.Stats`, checking everything.

    Rows may come in any order; ``feature_index`` puts them back. Extra
    columns are ignored.

    Parameters
    ----------
    table : pyarrow.Table
        As read from a stats file, metadata included.
    where : str
        Names the file in error messages.

    Raises
    ------
    StatsFileError
        For a newer format, missing metadata, missing or mistyped columns,
        nulls, histogram lists of the wrong length, or inconsistent values
        (negative counts, histograms that do not sum to the count,
        ``feature_index`` not a permutation of ``0..F-1``, duplicate names).
    """
    meta = _text_metadata(table.schema, where)
    _check_header(meta, where)
    _check_columns(table.schema, where)
    n = table.num_rows
    if n == 0:
        raise StatsFileError(f"{where}: the file holds no features (0 rows)")
    index = _numpy(table, "feature_index", where)
    order = None
    if not np.array_equal(index, np.arange(n, dtype=np.int32)):
        order = np.argsort(index, kind="stable")
        if not np.array_equal(index[order], np.arange(n)):
            raise StatsFileError(
                f"{where}: feature_index must number the {n} features 0..{n - 1} exactly once"
            )
    feature = table.column("feature")
    if feature.null_count:
        raise StatsFileError(f"{where}: column 'feature' has {feature.null_count} null value(s)")
    names = feature.to_pylist()
    arrays = {c: _numpy(table, c, where) for c in _INT_COLUMNS + _FLOAT_COLUMNS}
    histogram = _histogram_column(table, where)
    exact = {c: _exact_column(table, c, where) for c in _DECIMAL_COLUMNS}
    if (exact["int_sum"] is None) != (exact["int_sumsq"] is None):
        raise StatsFileError(f"{where}: int_sum and int_sumsq must both be present or both null")
    if order is not None:
        names = [names[i] for i in order]
        arrays = {c: a[order] for c, a in arrays.items()}
        histogram = None if histogram is None else histogram[order]
        exact = {c: None if v is None else tuple(v[i] for i in order) for c, v in exact.items()}
    names_t = tuple(names)
    problem = _check_values(arrays["count"], arrays["nan_count"], arrays["m2"], arrays["min"],
                            arrays["max"], histogram, exact["int_sumsq"], names_t)
    if problem is not None:
        raise StatsFileError(f"{where}: inconsistent statistics: {problem}")
    try:
        return Stats(
            layout=meta[META_LAYOUT], feature_names=names_t, dtype=meta[META_DTYPE],
            histogram=histogram, int_sum=exact["int_sum"], int_sumsq=exact["int_sumsq"],
            **arrays,
        )
    except StreamnormError as exc:
        raise StatsFileError(f"{where}: {exc}") from None


def stats_from_bytes(data: Any, where: str = "statistics file") -> Stats:
    """Decode a whole stats file held in memory (see :func:`table_to_stats`).

    Raises
    ------
    StatsFileError
        For empty, truncated or non-Parquet bytes and everything
        :func:`table_to_stats` refuses.
    """
    if len(data) == 0:
        raise StatsFileError(f"{where}: the file is empty (0 bytes)")
    try:
        # ParquetFile(...).read(use_threads=False): threaded reads of in-memory
        # buffers can abort the interpreter in pyarrow 26 (apache/arrow#34314).
        table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    except (pa.ArrowException, OSError, ValueError, TypeError, IndexError) as exc:
        raise StatsFileError(
            f"{where}: not a readable Parquet file ({type(exc).__name__}: {exc}); it is "
            f"truncated or corrupt, write it again with StatsStore.save"
        ) from None
    return table_to_stats(table, where)
