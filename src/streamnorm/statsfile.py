"""The on-disk format of one split's statistics: a small, self-describing Parquet file.

Format 2 is written; format 1 files still load. Long format, one row per
feature, in feature order:

============== ====================== ==========================================
column         type                   content
============== ====================== ==========================================
feature        string                 feature name
feature_index  int32                  0 .. F-1
count          int64                  values that entered the statistics
nan_count      int64                  non-finite values met
mean, m2       float64                plain mean, sum of squared deviations
min, max       float64                extremes (NaN for an empty feature)
shift          float64                value the feature was accumulated about
shifted_mean   float64                mean relative to it: mean == shift + shifted_mean
histogram      list<int64>            256 exact counts (8-bit input), else null
int_sum        decimal128(38, 0)      exact sum of integer input, else null
int_sumsq      decimal128(38, 0)      exact sum of squares, else null
masked_count   int64                  values skipped by a mask or ignore_value
distribution_* list<int64>            sparse distribution (keys, counts), else null
============== ====================== ==========================================

The two ``distribution_keys`` / ``distribution_counts`` columns (format 2,
optional on read) hold the distributions of ``histogram=True`` on data other
than 8-bit; :mod:`streamnorm._distfile` describes them.

``shift`` and ``shifted_mean`` (new in format 2) let merges of stored float
statistics stay as accurate as one pass; ``mean`` stays the plain mean, so
DuckDB, polars or pandas read the file as it is. Where the mean is not finite
(``nan_policy="propagate"``) ``shift`` is 0 and ``shifted_mean`` is the mean.
Format 1 has neither column; loading it takes the mean as its own shift.
``masked_count`` (format 2) counts the values a mask or ``ignore_value``
skipped; they are in neither ``count`` nor ``nan_count``. Format 1 files load
with zeros.

File key-value metadata (JSON-safe text): ``streamnorm.format_version``
(``"2"``), ``streamnorm.version``, ``layout``, ``dtype``, ``split``,
``created_at`` (ISO 8601, UTC), ``source`` (JSON, when known) and
``streamnorm.checksum``. Floats are stored without dictionary encoding, so
every bit (NaN payloads, ``-0.0``) survives, and every data page carries a
Parquet CRC-32 page checksum, verified on read.

Checksum (format 2): ``streamnorm.checksum`` is ``"sha256:"`` followed by the
hex SHA-256 of this byte string, all integers little-endian, every column in
``feature_index`` order:

1. ``b"streamnorm-stats\\n"``;
2. the JSON text (``sort_keys``, separators ``","`` and ``":"``, ASCII only) of
   the object holding those of the keys ``streamnorm.format_version``,
   ``streamnorm.version``, ``layout``, ``dtype``, ``split``, ``created_at`` and
   ``source`` that the file has, with their text values, then ``b"\\n"``;
3. F as int64; the F + 1 offsets of the names in their concatenated UTF-8
   bytes as int64 (0, then after each name the running total of the byte
   lengths: Arrow's string offsets, counted from 0); those concatenated bytes;
4. the columns ``count``, ``nan_count``, ``masked_count`` as int64[F]; ``mean``, ``m2``,
   ``min``, ``max``, ``shift``, ``shifted_mean`` as IEEE-754 binary64 [F];
5. ``histogram``: byte 0 when null, else byte 1 and the F x 256 counts as
   int64 (row-major); ``int_sum``, ``int_sumsq``: byte 0 when null, else byte 1
   and the F values as 16-byte two's complement (decimal128's own bytes);
6. the distribution, when there is one (see :mod:`streamnorm._distfile`).

Every part is a whole buffer, so computing it is a few hashes of contiguous
memory, not a loop over features. A column is either null for every feature
(only ``histogram``, ``int_sum`` and ``int_sumsq`` may be: byte 0) or for none;
other nulls make the file unreadable, so no null value is ever hashed. The
checksum covers values, not encodings: a file rewritten by another tool (row
order, row groups, large types, compression, extra columns or metadata keys)
still verifies as long as the values are the same. On load every file, format 1
included, must also be consistent: no negative counts (``masked_count``
included) or m2, a mean inside
[min, max], m2 within Popoviciu's bound ``count * (max - min)**2 / 4``,
min and max inside the dtype's range, histograms and exact sums that agree with
count, mean, m2, min and max bit for bit, an empty feature with NaN mean.
Non-finite mean, m2, min or max are accepted only with ``nan_count > 0``
(what ``nan_policy="propagate"`` gives).

Nothing is pickled and nothing in a file is evaluated: reading one is decoding
Parquet and checking values. The functions here are filesystem-free (bytes and
tables in, bytes and tables out) so that any module can reuse the format;
:mod:`streamnorm.store` adds paths, fsspec and atomic writes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import _distfile as D
from ._version import __version__
from .distribution import Distribution
from .errors import StatsFileError, StreamnormError
from .layout import parse_layout
from .stats import HISTOGRAM_BINS, Stats, exact_ints, exact_moments_array

__all__ = [
    "FORMAT_VERSION",
    "SCHEMA",
    "content_checksum",
    "file_metadata",
    "read_table",
    "stats_from_bytes",
    "stats_to_bytes",
    "stats_to_table",
    "table_to_stats",
]

#: Version of the on-disk format this code writes and the newest it reads.
FORMAT_VERSION = 2

META_FORMAT_VERSION = "streamnorm.format_version"
META_VERSION = "streamnorm.version"
META_LAYOUT = "layout"
META_DTYPE = "dtype"
META_SPLIT = "split"
META_CREATED_AT = "created_at"
META_SOURCE = "source"
META_CHECKSUM = "streamnorm.checksum"
#: Metadata keys covered by the content checksum (when present).
CHECKSUM_KEYS = (META_FORMAT_VERSION, META_VERSION, META_LAYOUT, META_DTYPE, META_SPLIT,
                 META_CREATED_AT, META_SOURCE, D.META_DISTRIBUTION, D.META_QUANTILE_ERROR)
_CHECKSUM_PREFIX = "sha256:"

EXACT_TYPE = pa.decimal128(38, 0)
_EXACT_LIMIT = 10**38  # decimal128(38, 0) holds |v| < 10**38
_LOW_WORD = (1 << 64) - 1
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
        pa.field("shift", pa.float64(), nullable=False),
        pa.field("shifted_mean", pa.float64(), nullable=False),
        pa.field("histogram", pa.list_(pa.int64()), nullable=True),
        pa.field("int_sum", EXACT_TYPE, nullable=True),
        pa.field("int_sumsq", EXACT_TYPE, nullable=True),
        pa.field("masked_count", pa.int64(), nullable=False),
        *D.FIELDS,
    ]
)
_SHIFT_COLUMNS = ("shift", "shifted_mean")
_MASKED_COLUMNS = ("masked_count",)
#: The columns of each format version.
_OPTIONAL = frozenset([*_SHIFT_COLUMNS, *_MASKED_COLUMNS, D.KEYS, D.COUNTS])
#: The columns each format version requires (format 2's distribution columns are optional).
_COLUMNS = {1: [f for f in SCHEMA if f.name not in _OPTIONAL],
            2: [f for f in SCHEMA if f.name not in (D.KEYS, D.COUNTS)]}

_KNOWN_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "bfloat16", "float16", "float32", "float64",
     # numpy's longdouble, reduced through float64 by the accumulator
     "float96", "float128"]
)
_BFLOAT16_MAX = float.fromhex("0x1.fep+127")
_INT_COLUMNS = ("count", "nan_count")
_FLOAT_COLUMNS = ("mean", "m2", "min", "max")
_HISTOGRAM_DTYPES = frozenset(["bool", "uint8", "int8"])
# Slack for rounded float results against exact bounds (mean inside [min, max],
# m2 under Popoviciu's bound); bit flips beyond it are the checksum's job.
_RTOL = 1e-9
_SUBNORMAL = float(np.finfo(np.float64).smallest_subnormal)


@dataclass(frozen=True)
class _Exact:
    """One exact-sum column in feature order: its decimal128 words and the values they hold.

    ``words[f]`` is value ``f`` as 128-bit two's complement, low 64-bit word
    first, i.e. decimal128's own memory layout; ``values`` is int64 when every
    value fits in it (the usual case, converted in bulk) and Python ints otherwise.
    """

    words: np.ndarray
    values: np.ndarray

    @classmethod
    def from_values(cls, values: Sequence[int], column: str, names: Sequence[str]) -> _Exact:
        """From Python ints; ``StreamnormError`` for a value that decimal128(38, 0) cannot hold."""
        ints = exact_ints(values)
        if ints.dtype == np.int64:
            return cls(np.stack([ints, ints >> 63], axis=1), ints)
        if (big := (ints <= -_EXACT_LIMIT) | (ints >= _EXACT_LIMIT)).any():
            f = int(np.flatnonzero(big)[0])
            raise StreamnormError(
                f"cannot store the exact {column} of feature {names[f]!r}: it has "
                f"{len(str(abs(ints[f])))} digits and the statistics file holds at most 38; "
                f"split the data into smaller splits and merge them after loading"
            )
        low = (ints & _LOW_WORD).astype(np.uint64).view(np.int64)
        return cls(np.stack([low, (ints >> 64).astype(np.int64)], axis=1), ints)

    @classmethod
    def from_arrow(cls, arr: pa.Array, column: str, where: str) -> _Exact:
        """From a decimal128 array without nulls; ``StatsFileError`` beyond 38 digits."""
        n = len(arr)
        words = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=2 * (arr.offset + n))
        words = words.reshape(-1, 2)[arr.offset:]
        low, high = words[:, 0], words[:, 1]
        if np.array_equal(high, low >> 63):  # every value fits in int64
            return cls(words, low)
        ints = (high.astype(object) << 64) + low.view(np.uint64).astype(object)
        if ((ints <= -_EXACT_LIMIT) | (ints >= _EXACT_LIMIT)).any():
            raise StatsFileError(f"{where}: column {column!r} holds a value beyond 38 digits")
        return cls(words, ints)

    def take(self, order: np.ndarray) -> _Exact:
        return _Exact(self.words[order], self.values[order])

    def to_bytes(self) -> bytes:
        """The values as 16-byte little-endian two's complement, one after the other."""
        return np.ascontiguousarray(self.words, dtype="<i8").tobytes()

    def to_arrow(self) -> pa.Array:
        return pa.Array.from_buffers(EXACT_TYPE, len(self.values),
                                     [None, pa.py_buffer(self.to_bytes())])


@dataclass
class _Columns:
    """The decoded values of a stats file, in feature order, before any checking."""

    names: pa.Array  # string or large_string, no nulls; UTF-8 not yet validated
    arrays: dict[str, np.ndarray]
    histogram: np.ndarray | None
    exact: dict[str, _Exact | None]
    distribution: Distribution | None = None


# -- encoding ----------------------------------------------------------------
def _histogram_array(histogram: np.ndarray | None, n: int) -> pa.Array:
    list_type = SCHEMA.field("histogram").type
    if histogram is None:
        return pa.nulls(n, type=list_type)
    offsets = pa.array(np.arange(0, n * HISTOGRAM_BINS + 1, HISTOGRAM_BINS, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(histogram.reshape(-1)), type=list_type)


def _first(bad: np.ndarray, names: Sequence[str]) -> str:
    return repr(names[int(np.flatnonzero(bad)[0])])


def _basic_problem(a: Mapping[str, np.ndarray], names: Sequence[str]) -> str | None:
    """Signs, empty features, and non-finite values where no NaN was counted."""
    count, nan_count, mean, m2, lo, hi = (a[c] for c in _INT_COLUMNS + _FLOAT_COLUMNS)
    empty, seen, clean = count == 0, count > 0, nan_count == 0
    masked = a.get("masked_count", np.zeros_like(count))
    checks = (
        (count < 0, "negative count"),
        (nan_count < 0, "negative nan_count"),
        (masked < 0, "negative masked_count"),
        (m2 < 0, "negative m2 (sum of squared deviations)"),
        (empty & ~np.isnan(mean), "count 0 but a mean that is not NaN"),
        (empty & (m2 != 0), "count 0 but m2 not 0"),
        (empty & ~(np.isnan(lo) & np.isnan(hi)), "count 0 but min or max not NaN"),
        (seen & clean & ~np.isfinite(mean), "a mean that is not finite although nan_count is 0"),
        (seen & clean & np.isnan(m2), "m2 NaN although nan_count is 0"),
        (seen & clean & ~(np.isfinite(lo) & np.isfinite(hi)),
         "min or max not finite although nan_count is 0"),
        (seen & (lo > hi), "min greater than max"),
    )
    for bad, what in checks:
        if bad.any():
            return f"{what} for feature {_first(bad, names)}"
    return None


def _range_problem(a: Mapping[str, np.ndarray], dtype: str, names: Sequence[str]) -> str | None:
    """Mean inside [min, max], m2 under Popoviciu's bound, min/max inside the dtype."""
    count, mean, m2, lo, hi = (a[c] for c in ("count", "mean", "m2", "min", "max"))
    both = (count > 0) & np.isfinite(lo) & np.isfinite(hi)
    with np.errstate(over="ignore", invalid="ignore"):
        tol = _RTOL * np.maximum(np.abs(lo), np.abs(hi))
        outside = both & np.isfinite(mean) & ((mean < lo - tol) | (mean > hi + tol))
        width = hi - lo
        # (plus a few subnormal ulps per value: rounding below 2**-1022 is absolute)
        bound = count * (width * width) / 4 * (1 + _RTOL) + count * (4 * _SUBNORMAL)
        too_big = both & (m2 > bound)
    if outside.any():
        return f"mean outside [min, max] for feature {_first(outside, names)}"
    if too_big.any():
        return (f"m2 larger than count * (max - min)**2 / 4 allows for feature "
                f"{_first(too_big, names)}")
    kind = "f" if dtype == "bfloat16" else np.dtype(dtype).kind
    if kind in "biu":
        info = np.iinfo(np.int8 if kind == "b" else dtype)
        low, high = (0, 1) if kind == "b" else (info.min, info.max)
        with np.errstate(invalid="ignore"):
            ok = (np.floor(lo) == lo) & (np.floor(hi) == hi) & (lo >= low) & (hi <= high)
        what = f"whole numbers in [{low}, {high}]"
    elif kind == "f":
        biggest = _BFLOAT16_MAX if dtype == "bfloat16" else float(np.finfo(dtype).max)
        ok = ~np.isfinite(lo) | (np.abs(lo) <= biggest)
        ok &= ~np.isfinite(hi) | (np.abs(hi) <= biggest)
        what = f"inside +-{biggest:g}"
    else:
        return None
    if (bad := (count > 0) & ~ok).any():
        return f"min or max is not a value of {dtype} data ({what}) for feature {_first(bad, names)}"
    return None


def _shift_problem(a: Mapping[str, np.ndarray], names: Sequence[str]) -> str | None:
    """``mean == shift + shifted_mean``; a non-finite mean travels as ``(0, mean)``."""
    if "shift" not in a:
        return None
    mean, shift, rel = a["mean"], a["shift"], a["shifted_mean"]
    finite = np.isfinite(mean)
    with np.errstate(invalid="ignore", over="ignore"):
        bad = finite & ~(np.isfinite(shift) & (shift + rel == mean))
        same = (rel == mean) | (np.isnan(rel) & np.isnan(mean))
    bad |= ~finite & ~((shift == 0) & same)
    if bad.any():
        return f"mean is not shift + shifted_mean for feature {_first(bad, names)}"
    return None


def _histogram_problem(
    a: Mapping[str, np.ndarray], histogram: np.ndarray, exact: Mapping[str, Any], dtype: str,
    names: Sequence[str],
) -> str | None:
    """Counts that sum to count and agree with min, max and the moments, bit for bit."""
    if dtype not in _HISTOGRAM_DTYPES:
        return f"a histogram for {dtype} data (histograms are kept for 8-bit data only)"
    count = a["count"]
    if (bad := (histogram < 0).any(axis=1)).any():
        return f"negative histogram count for feature {_first(bad, names)}"
    if (bad := histogram.sum(axis=1) != count).any():
        return f"histogram does not sum to count for feature {_first(bad, names)}"
    offset = -128 if dtype == "int8" else 0
    values = np.arange(HISTOGRAM_BINS, dtype=np.int64) + offset
    # every bin is <= count, so int64 is exact below this count; else Python ints
    if int(count.max(initial=0)) < (1 << 62) // (128 * 128 * HISTOGRAM_BINS):
        sums, sumsqs = histogram @ values, histogram @ (values * values)
    else:
        wide = histogram.astype(object)
        sums, sumsqs = wide @ values.astype(object), wide @ (values * values).astype(object)
    seen = histogram > 0
    has = seen.any(axis=1)
    lo = np.where(has, values[np.argmax(seen, axis=1)], np.nan)
    hi = np.where(has, values[HISTOGRAM_BINS - 1 - np.argmax(seen[:, ::-1], axis=1)], np.nan)
    if (bad := has & ((lo != a["min"]) | (hi != a["max"]))).any():
        return f"histogram disagrees with min or max for feature {_first(bad, names)}"
    if exact["int_sum"] is not None:
        bad = np.asarray(sums != exact["int_sum"].values, dtype=bool)
        bad |= np.asarray(sumsqs != exact["int_sumsq"].values, dtype=bool)
        if bad.any():
            return f"histogram disagrees with int_sum or int_sumsq for feature {_first(bad, names)}"
        return None
    return _moments_problem(a, sums, sumsqs, "histogram", names)


def _moments_problem(
    a: Mapping[str, np.ndarray], sums: np.ndarray, sumsqs: np.ndarray, what: str,
    names: Sequence[str],
) -> str | None:
    """Mean and m2 must be the exact sums' moments, each rounded once."""
    count, mean, m2 = a["count"], a["mean"], a["m2"]
    empty = count == 0
    stray = empty & np.asarray((sums != 0) | (sumsqs != 0), dtype=bool)
    want_mean, want_m2 = exact_moments_array(count, sums, sumsqs)
    wrong = (want_m2 != m2) | ~((want_mean == mean) | empty)
    if not (bad := stray | wrong).any():
        return None
    f = int(np.flatnonzero(bad)[0])
    if stray[f]:
        return f"count 0 but {what} not 0 for feature {names[f]!r}"
    return f"mean or m2 disagrees with the {what} for feature {names[f]!r}"


def _exact_problem(
    exact: Mapping[str, _Exact | None], dtype: str, names: Sequence[str]
) -> str | None:
    if exact["int_sum"] is None:
        return None
    if dtype == "bfloat16" or np.dtype(dtype).kind not in "biu":
        return f"exact integer sums for {dtype} data"
    if (bad := np.asarray(exact["int_sumsq"].values < 0, dtype=bool)).any():
        return f"negative int_sumsq for feature {_first(bad, names)}"
    return None


def _inconsistency(
    arrays: Mapping[str, np.ndarray],
    histogram: np.ndarray | None,
    exact: Mapping[str, _Exact | None],
    dtype: str,
    names: Sequence[str],
    distribution: Distribution | None = None,
) -> str | None:
    """The first way in which a set of statistics contradicts itself, or None.

    Accepts everything the accumulator and the merges produce, including the
    non-finite mean, m2, min and max of ``nan_policy="propagate"`` (which come
    with ``nan_count > 0``).
    """
    with np.errstate(invalid="ignore"):
        problem = (_basic_problem(arrays, names) or _range_problem(arrays, dtype, names)
                   or _shift_problem(arrays, names))
    problem = problem or _exact_problem(exact, dtype, names)
    if problem is None and histogram is not None:
        problem = _histogram_problem(arrays, histogram, exact, dtype, names)
    if problem is None and distribution is not None:
        problem = D.problem(distribution, arrays, exact, dtype, names)
    if problem is None and exact["int_sum"] is not None:
        problem = _moments_problem(arrays, exact["int_sum"].values, exact["int_sumsq"].values,
                                   "exact sums int_sum/int_sumsq", names)
    return problem


# -- checksum ----------------------------------------------------------------
def _name_bytes(names: pa.Array) -> tuple[np.ndarray, Any]:
    """The names' UTF-8 end offsets (int64[F + 1], from 0) and bytes, whatever the slice offset."""
    offset_type = np.int64 if pa.types.is_large_string(names.type) else np.int32
    _, offsets, data = names.buffers()
    ends = np.frombuffer(offsets, dtype=offset_type, count=names.offset + len(names) + 1)
    ends = ends[names.offset:]
    start, stop = int(ends[0]), int(ends[-1])
    return (ends - ends[0]).astype("<i8"), b"" if data is None else memoryview(data)[start:stop]


def _digest(meta: Mapping[str, str], cols: _Columns) -> str:
    """The content checksum of the module docstring ("sha256:<hex>"), from whole buffers."""
    h = hashlib.sha256(b"streamnorm-stats\n")
    covered = {k: meta[k] for k in CHECKSUM_KEYS if k in meta}
    h.update(json.dumps(covered, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
             .encode("ascii") + b"\n")
    ends, data = _name_bytes(cols.names)
    h.update(struct.pack("<q", len(cols.names)))
    h.update(ends.tobytes())
    h.update(data)
    for column in _INT_COLUMNS + _MASKED_COLUMNS:
        h.update(np.ascontiguousarray(cols.arrays[column], dtype="<i8").tobytes())
    for column in _FLOAT_COLUMNS + _SHIFT_COLUMNS:
        h.update(np.ascontiguousarray(cols.arrays[column], dtype="<f8").tobytes())
    if cols.histogram is None:
        h.update(b"\x00")
    else:
        h.update(b"\x01" + np.ascontiguousarray(cols.histogram, dtype="<i8").tobytes())
    for column in _DECIMAL_COLUMNS:
        exact = cols.exact[column]
        h.update(b"\x00" if exact is None else b"\x01" + exact.to_bytes())
    h.update(D.digest_bytes(cols.distribution))
    return _CHECKSUM_PREFIX + h.hexdigest()


def _stats_columns(stats: Stats) -> _Columns:
    try:
        names = pa.array(stats.feature_names, type=pa.string())
    except (UnicodeError, pa.ArrowException) as exc:
        raise StreamnormError(f"feature names are not valid UTF-8 text: {exc}") from exc
    exact = {}
    for column in _DECIMAL_COLUMNS:
        values = getattr(stats, column)
        exact[column] = None if values is None else _Exact.from_values(
            values, column, stats.feature_names)
    return _Columns(
        names=names,
        arrays={c: getattr(stats, c) for c in _INT_COLUMNS + _MASKED_COLUMNS + _FLOAT_COLUMNS + _SHIFT_COLUMNS},
        histogram=stats.histogram,
        exact=exact,
        distribution=stats.distribution,
    )


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
    cols = _stats_columns(stats)
    problem = _inconsistency(cols.arrays, cols.histogram, cols.exact, stats.dtype, names, cols.distribution)
    if problem is not None:
        raise StreamnormError(f"cannot save inconsistent statistics: {problem}")
    n = len(names)
    columns = [
        cols.names,
        pa.array(np.arange(n, dtype=np.int32)),
        *(pa.array(cols.arrays[c]) for c in _INT_COLUMNS + _FLOAT_COLUMNS + _SHIFT_COLUMNS),
        _histogram_array(stats.histogram, n),
        *(pa.nulls(n, type=EXACT_TYPE) if cols.exact[c] is None else cols.exact[c].to_arrow()
          for c in _DECIMAL_COLUMNS),
        *(pa.array(cols.arrays[c]) for c in _MASKED_COLUMNS),
        *D.to_arrow(stats.distribution, n),
    ]
    metadata = {
        META_FORMAT_VERSION: str(FORMAT_VERSION),
        META_VERSION: __version__,
        META_LAYOUT: stats.layout,
        META_DTYPE: stats.dtype,
        META_CREATED_AT: created_at or _utc_now(),
    }
    metadata.update(D.metadata(stats.distribution))
    if split is not None:
        metadata[META_SPLIT] = split
    if source is not None:
        try:
            metadata[META_SOURCE] = json.dumps(source, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise StreamnormError(
                f"source must be JSON-serializable (lists, dicts, str, numbers): {exc}"
            ) from exc
    metadata[META_CHECKSUM] = _digest(metadata, cols)
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
    # Page checksums (CRC-32) let readers catch corrupted pages themselves.
    pq.write_table(table, sink, use_dictionary=False, compression="zstd",
                   write_page_checksum=True)
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
        ``split`` (or None), ``created_at`` (or None), ``source`` (the
        decoded JSON, or None) and ``checksum`` (or None for format 1).

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
        "checksum": meta.get(META_CHECKSUM),
    }


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return str(t)


def _check_columns(schema: pa.Schema, version: int, where: str) -> None:
    fields = _COLUMNS[version]
    missing = [f.name for f in fields if f.name not in schema.names]
    if missing:
        raise StatsFileError(
            f"{where}: missing column(s) {missing}; a statistics file of format {version} has "
            f"columns {[f.name for f in fields]}"
        )
    for expected in fields:
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


def _exact_column(table: pa.Table, name: str, where: str) -> _Exact | None:
    column = table.column(name)
    if column.null_count == len(column):
        return None
    if column.null_count:
        raise StatsFileError(
            f"{where}: column {name!r} is null for some features only (it must be null for "
            f"all features or for none)"
        )
    return _Exact.from_arrow(column.combine_chunks(), name, where)


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


def _names_array(table: pa.Table, where: str) -> pa.Array:
    feature = table.column("feature")
    if feature.null_count:
        raise StatsFileError(f"{where}: column 'feature' has {feature.null_count} null value(s)")
    # kept undecoded: a corrupted name must reach the checksum, not a UnicodeDecodeError
    return feature.combine_chunks()


def _decode_names(names: pa.Array, where: str) -> tuple[str, ...]:
    try:
        names.validate(full=True)  # checks UTF-8 in bulk
        return tuple(names.to_pylist())
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise StatsFileError(f"{where}: a feature name is not valid UTF-8 text ({exc})") from None


def _columns(table: pa.Table, version: int, where: str, meta: Mapping[str, str]) -> _Columns:
    """The values of a stats-file table in ``feature_index`` order, unchecked but typed."""
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
    names = _names_array(table, where)
    ints = _INT_COLUMNS + (_MASKED_COLUMNS if version >= 2 else ())
    floats = _FLOAT_COLUMNS + (_SHIFT_COLUMNS if version >= 2 else ())
    arrays = {c: _numpy(table, c, where) for c in ints + floats}
    histogram = _histogram_column(table, where)
    exact = {c: _exact_column(table, c, where) for c in _DECIMAL_COLUMNS}
    if (exact["int_sum"] is None) != (exact["int_sumsq"] is None):
        raise StatsFileError(f"{where}: int_sum and int_sumsq must both be present or both null")
    distribution = D.from_table(table, meta, where)
    if order is not None:
        names = names.take(pa.array(order))
        arrays = {c: a[order] for c, a in arrays.items()}
        histogram = None if histogram is None else histogram[order]
        exact = {c: None if v is None else v.take(order) for c, v in exact.items()}
        distribution = None if distribution is None else distribution.select(order)
    return _Columns(names=names, arrays=arrays, histogram=histogram, exact=exact, distribution=distribution)


def content_checksum(table: pa.Table, where: str = "statistics file") -> str:
    """The content checksum of a stats-file table, as its ``streamnorm.checksum`` should read.

    Defined in the module docstring: SHA-256 over the values in feature order and
    the streamnorm metadata keys, independent of the Parquet encoding.

    Raises
    ------
    StatsFileError
        When the table is not a readable statistics table of format 2 or later.

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> t = stats_to_table(sn.compute_stats([np.ones((2, 2))], layout="NF"))
    >>> content_checksum(t) == t.schema.metadata[b"streamnorm.checksum"].decode()
    True
    """
    meta = _text_metadata(table.schema, where)
    version = _check_header(meta, where)
    if version < 2:
        raise StatsFileError(f"{where}: format {version} files carry no checksum")
    _check_columns(table.schema, version, where)
    return _digest(meta, _columns(table, version, where, meta))


def _verify_checksum(meta: Mapping[str, str], cols: _Columns, where: str) -> None:
    stored = meta.get(META_CHECKSUM)
    if stored is None:
        raise StatsFileError(
            f"{where}: the {META_CHECKSUM!r} metadata is missing, so the content cannot be "
            f"verified; write the file again with StatsStore.save"
        )
    if stored != _digest(meta, cols):
        raise StatsFileError(
            f"{where}: checksum mismatch: the file's content is not what was written (corrupted "
            f"or edited); restore it from a backup or compute the statistics again"
        )


def table_to_stats(table: pa.Table, where: str = "statistics file") -> Stats:
    """Decode a stats-file table into :class:`~streamnorm.Stats`, checking everything.

    Rows may come in any order; ``feature_index`` puts them back. Extra
    columns and metadata keys are ignored. Format 2 tables must match their
    content checksum; every table must hold consistent values (see the module
    docstring).

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
        nulls, histogram lists of the wrong length, a checksum mismatch, or
        inconsistent values (negative counts, a mean outside [min, max],
        histograms or exact sums that disagree with the moments,
        ``feature_index`` not a permutation of ``0..F-1``, duplicate names...).
    """
    meta = _text_metadata(table.schema, where)
    version = _check_header(meta, where)
    _check_columns(table.schema, version, where)
    cols = _columns(table, version, where, meta)
    if version >= 2:
        _verify_checksum(meta, cols, where)
    names = _decode_names(cols.names, where)
    problem = _inconsistency(cols.arrays, cols.histogram, cols.exact, meta[META_DTYPE], names,
                             cols.distribution)
    if problem is not None:
        raise StatsFileError(f"{where}: inconsistent statistics: {problem}")
    try:
        return Stats(
            layout=meta[META_LAYOUT], feature_names=names, dtype=meta[META_DTYPE],
            histogram=cols.histogram, int_sum=_exact_values(cols.exact["int_sum"]),
            int_sumsq=_exact_values(cols.exact["int_sumsq"]), distribution=cols.distribution,
            **cols.arrays,
        )
    except StreamnormError as exc:
        raise StatsFileError(f"{where}: {exc}") from None


def _exact_values(exact: _Exact | None) -> np.ndarray | None:
    # Stats turns an integer array into its tuple of ints in bulk
    return None if exact is None else exact.values


def read_table(data: Any, where: str = "statistics file") -> pa.Table:
    """The Parquet table of a stats file held in memory, page checksums verified.

    Raises
    ------
    StatsFileError
        For empty, truncated, corrupted (a page checksum fails) or non-Parquet bytes.
    """
    if len(data) == 0:
        raise StatsFileError(f"{where}: the file is empty (0 bytes)")
    try:
        # ParquetFile(...).read(use_threads=False): threaded reads of in-memory
        # buffers can abort the interpreter in pyarrow 26 (apache/arrow#34314).
        pf = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
        return pf.read(use_threads=False)
    except (pa.ArrowException, OSError, ValueError, TypeError, IndexError, KeyError,
            RuntimeError, MemoryError, OverflowError) as exc:
        raise StatsFileError(
            f"{where}: not a readable Parquet file ({type(exc).__name__}: {exc}); it is "
            f"truncated or corrupt, write it again with StatsStore.save"
        ) from None


def stats_from_bytes(data: Any, where: str = "statistics file") -> Stats:
    """Decode a whole stats file held in memory (see :func:`table_to_stats`).

    Raises
    ------
    StatsFileError
        For empty, truncated or non-Parquet bytes, pages that fail their
        checksum, and everything :func:`table_to_stats` refuses.
    """
    return table_to_stats(read_table(data, where), where)
