"""Distributions in the stats file: two sparse list columns and two metadata keys.

============================ ============ =========================================
column / metadata key        type         content
============================ ============ =========================================
``distribution_keys``        list<int64>  a feature's occupied keys, ascending
``distribution_counts``      list<int64>  how many values each key holds (> 0)
``streamnorm.distribution``  text         ``"exact"`` (keys are values) or ``"grid"``
``streamnorm.quantile_error`` text        the grid's relative bound (``repr`` of a float)
============================ ============ =========================================

Both columns are null for every feature when the statistics keep no sparse
distribution (8-bit data keeps its dense ``histogram``), and the metadata keys
are then absent; files written before distributions existed read the same way.
Sparse lists keep a mostly-empty 65536-bin 16-bit histogram or a log grid at a
few bytes per occupied key. The checksum covers both metadata keys and, after
the exact-sum columns, byte 2 followed by the F + 1 offsets, the keys and the
counts as little-endian int64 (nothing when there is no distribution).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from . import _kernels as K
from .distribution import EXACT, GRID, Distribution, grid_bits
from .errors import StatsFileError, StreamnormError

META_DISTRIBUTION = "streamnorm.distribution"
META_QUANTILE_ERROR = "streamnorm.quantile_error"
KEYS, COUNTS = "distribution_keys", "distribution_counts"
FIELDS = [pa.field(KEYS, pa.list_(pa.int64()), nullable=True),
          pa.field(COUNTS, pa.list_(pa.int64()), nullable=True)]
# int32: int8 and uint16 data together promote to it, and their values stay exact
_EXACT_DTYPES = frozenset(["bool", "int8", "uint8", "int16", "uint16", "int32"])


def metadata(dist: Distribution | None) -> dict[str, str]:
    if dist is None:
        return {}
    return {META_DISTRIBUTION: dist.kind, META_QUANTILE_ERROR: repr(float(dist.error))}


def to_arrow(dist: Distribution | None, n: int) -> list[pa.Array]:
    """The two list columns of ``dist`` (all null without one)."""
    if dist is None:
        return [pa.nulls(n, type=f.type) for f in FIELDS]
    offsets = pa.array(dist.offsets.astype(np.int32) if dist.keys.size < 2**31 else dist.offsets)
    if offsets.type == pa.int64():
        return [pa.LargeListArray.from_arrays(offsets, pa.array(v)).cast(f.type)
                for v, f in ((dist.keys, FIELDS[0]), (dist.counts, FIELDS[1]))]
    return [pa.ListArray.from_arrays(offsets, pa.array(v), type=f.type)
            for v, f in ((dist.keys, FIELDS[0]), (dist.counts, FIELDS[1]))]


def digest_bytes(dist: Distribution | None) -> bytes:
    if dist is None:
        return b""
    return b"\x02" + b"".join(np.ascontiguousarray(v, dtype="<i8").tobytes()
                              for v in (dist.offsets, dist.keys, dist.counts))


def _list_parts(column: pa.ChunkedArray, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    arr = column.combine_chunks()
    t = arr.type
    if not ((pa.types.is_list(t) or pa.types.is_large_list(t)) and t.value_type == pa.int64()):
        raise StatsFileError(f"{where}: column {name!r} has type {t}, expected list<int64>")
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.flatten()
    if values.null_count:
        raise StatsFileError(f"{where}: column {name!r} holds null values")
    return offsets - offsets[0], values.to_numpy().astype(np.int64)


def from_table(table: pa.Table, meta: Mapping[str, str], where: str) -> Distribution | None:
    """The distribution of a stats-file table in row order (None when it has none)."""
    present = [f.name for f in FIELDS if f.name in table.schema.names]
    if not present:
        return None
    if len(present) != 2:
        raise StatsFileError(f"{where}: columns {KEYS!r} and {COUNTS!r} must come together")
    columns = [table.column(f.name) for f in FIELDS]
    nulls = {c.null_count for c in columns}
    if nulls == {len(table)} and META_DISTRIBUTION not in meta:
        return None
    if nulls != {0}:
        raise StatsFileError(
            f"{where}: columns {KEYS!r} and {COUNTS!r} must be null for all features (no "
            f"distribution) or for none, together with the {META_DISTRIBUTION!r} metadata"
        )
    (off_k, keys), (off_c, counts) = (_list_parts(c, f.name, where) for c, f in zip(columns, FIELDS))
    if not np.array_equal(off_k, off_c):
        raise StatsFileError(f"{where}: {KEYS!r} and {COUNTS!r} lists differ in length")
    kind = meta.get(META_DISTRIBUTION)
    try:
        error = float(meta.get(META_QUANTILE_ERROR, "nan")) if kind == GRID else 0.0
        return Distribution(kind, error, off_k, keys, counts)
    except (StreamnormError, ValueError) as exc:
        raise StatsFileError(f"{where}: bad distribution: {exc}") from None


def _first(bad: np.ndarray, names: Sequence[str]) -> str:
    return repr(names[int(np.flatnonzero(bad)[0])])


def grid_key(values: np.ndarray, error: float) -> np.ndarray:
    """Grid keys of float64 values (NaN gets the skip key)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).reshape(-1).view(np.int64)
    return K.grid_keys_of(bits, np.int64(52 - grid_bits(error)))


def problem(dist: Distribution, a: Mapping[str, np.ndarray], exact: Mapping[str, object], dtype: str,
            names: Sequence[str]) -> str | None:
    """How a distribution contradicts the other columns, or None.

    Exact counts sum to ``count`` and give min, max and the exact sums; grid
    counts sum to ``count`` less the NaNs that entered (at most ``nan_count``),
    and their first and last keys are the buckets of min and max.
    """
    if dist.n_features != len(names):
        return f"a distribution of {dist.n_features} features for {len(names)} features"
    count, nan_count, lo, hi = a["count"], a["nan_count"], a["min"], a["max"]
    total = dist.total()
    if dist.kind == EXACT:
        if dtype not in _EXACT_DTYPES:
            return f"exact counts per value for {dtype} data (kept for bool, 8- and 16-bit integers)"
        from .distribution import exact_sums

        if (bad := total != count).any():
            return f"distribution does not sum to count for feature {_first(bad, names)}"
        sums, sumsqs, dlo, dhi = exact_sums(dist)
        seen = count > 0
        if (bad := seen & ((dlo != lo) | (dhi != hi))).any():
            return f"distribution disagrees with min or max for feature {_first(bad, names)}"
        if exact["int_sum"] is None:
            return "exact counts per value without the exact sums int_sum/int_sumsq"
        bad = np.asarray(np.array(sums, dtype=object) != exact["int_sum"].values, dtype=bool)
        bad |= np.asarray(np.array(sumsqs, dtype=object) != exact["int_sumsq"].values, dtype=bool)
        if bad.any():
            return f"distribution disagrees with int_sum or int_sumsq for feature {_first(bad, names)}"
        return None
    if (bad := (total > count) | ((nan_count == 0) & (total != count))).any():
        return f"distribution does not sum to count for feature {_first(bad, names)}"
    has = (total > 0) & ~np.isnan(lo) & ~np.isnan(hi)
    first = np.where(has, dist.keys[np.minimum(dist.offsets[:-1], max(dist.keys.size - 1, 0))], 0)
    last = np.where(has, dist.keys[np.maximum(dist.offsets[1:] - 1, 0)], 0)
    bad = has & ((grid_key(np.where(has, lo, 0.0), dist.error) != first)
                 | (grid_key(np.where(has, hi, 0.0), dist.error) != last))
    if bad.any():
        return f"distribution disagrees with min or max for feature {_first(bad, names)}"
    return None
