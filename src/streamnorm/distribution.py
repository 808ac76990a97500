"""Per-feature distributions: exact counts per value, or counts on a fixed log grid.

A :class:`Distribution` holds, per feature, the sorted occupied keys of a grid
fixed in advance and the count of values in each, as one compressed sparse
row set (``offsets``, ``keys``, ``counts``): memory grows with the occupied
keys, never with the data.

- ``kind="exact"`` (bool, 8- and 16-bit integers): a key is the value itself,
  so quantiles equal ``numpy.quantile``'s bit for bit.
- ``kind="grid"`` (floats, 32/64-bit integers): a key is taken from the bits
  of the value as float64: sign, exponent and the top ``bits`` mantissa bits;
  zero and subnormals keep their exact bits. A bucket spans a relative width
  of ``2**-bits`` and is represented by its midpoint, within relative
  ``2**-(bits+1)`` of every value in it.

The grid depends only on ``bits``, never on the data, so merging is adding
integer counts: bit-identical whatever the batching, sharding, threads or
merge order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import _kernels as K
from .errors import IncompatibleStatsError, StreamnormError

__all__ = ["Distribution", "grid_bits", "DEFAULT_QUANTILE_ERROR"]

EXACT = "exact"
GRID = "grid"
KINDS = (EXACT, GRID)
DEFAULT_QUANTILE_ERROR = 1e-3
MANTISSA_BITS = 52
_SUB = 1 << 52


def check_quantile_error(error: float) -> float:
    """``error`` as a float, or a clear error when it is not in (0, 1)."""
    try:
        value = float(error)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(error, bool) or not 0.0 < value < 1.0:
        raise StreamnormError(
            f"quantile_error must be a number with 0 < quantile_error < 1 (a relative error, "
            f"e.g. 1e-3), got {error!r}"
        )
    return value


def grid_bits(error: float) -> int:
    """Mantissa bits a grid keeps so that a bucket's midpoint is within relative ``error``.

    The smallest ``k`` with ``2**-(k+1) <= error`` (at most 52: then every
    bucket holds one float64).

    Examples
    --------
    >>> grid_bits(1e-3), grid_bits(0.5), grid_bits(1e-30)
    (9, 0, 52)
    """
    error = check_quantile_error(error)
    k = 0
    while k < MANTISSA_BITS and 2.0 ** -(k + 1) > error:
        k += 1
    return k


def grid_value(keys: np.ndarray, bits: int) -> np.ndarray:
    """The float64 each grid key stands for: its bucket's midpoint (exact below 2**52)."""
    keys = np.asarray(keys, np.int64)
    mag = np.abs(keys)
    drop = MANTISSA_BITS - bits
    normal = mag >= _SUB
    low = np.where(normal, ((mag - _SUB) << drop) + _SUB, mag)
    half = (1 << (drop - 1)) if drop > 0 else 0
    inf = low >= int(K.INF_BITS)
    pattern = np.where(normal & ~inf, low + half, np.where(inf, int(K.INF_BITS), low))
    value = pattern.view(np.float64)
    return np.where(keys < 0, -value, value)


@dataclass(frozen=True, eq=False)
class Distribution:
    """Counts of each feature's values on a grid fixed in advance (see the module notes).

    Parameters
    ----------
    kind : {"exact", "grid"}
        Keys are values (``"exact"``) or log-grid buckets (``"grid"``).
    error : float
        The relative bound of the grid's quantiles (0.0 for ``"exact"``).
    offsets : int64[F + 1]
        Feature ``f`` owns ``keys[offsets[f]:offsets[f + 1]]``.
    keys, counts : int64[nnz]
        Sorted distinct keys per feature and how many values each holds.

    Examples
    --------
    >>> import numpy as np
    >>> d = Distribution.from_dense(np.array([[0, 2, 1]]), offset=10)
    >>> d.keys.tolist(), d.counts.tolist(), d.values(0).tolist()
    ([11, 12], [2, 1], [11.0, 12.0])
    """

    kind: str
    error: float
    offsets: np.ndarray
    keys: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise StreamnormError(f"distribution kind must be one of {KINDS}, got {self.kind!r}")
        error = 0.0 if self.kind == EXACT else check_quantile_error(self.error)
        set_ = object.__setattr__
        set_(self, "error", error)
        for name in ("offsets", "keys", "counts"):
            arr = np.array(getattr(self, name), dtype=np.int64, copy=True).reshape(-1)
            arr.setflags(write=False)
            set_(self, name, arr)
        o = self.offsets
        if (o.size < 1 or o[0] != 0 or o[-1] != self.keys.size or self.keys.size != self.counts.size
                or np.any(np.diff(o) < 0)):
            raise StreamnormError("malformed distribution: offsets do not cut keys and counts into features")
        if np.any(self.counts <= 0):
            raise StreamnormError("malformed distribution: a stored count is not positive")
        feature = np.repeat(np.arange(o.size - 1), np.diff(o))
        if np.any((np.diff(self.keys) <= 0) & (feature[1:] == feature[:-1])):
            raise StreamnormError("malformed distribution: keys of a feature are not sorted and distinct")

    # -- construction -------------------------------------------------------
    @staticmethod
    def _trusted(kind: str, error: float, offsets: np.ndarray, keys: np.ndarray,
                 counts: np.ndarray) -> Distribution:
        """A distribution from the kernels' own output, whose shape they guarantee (no checks)."""
        out = object.__new__(Distribution)
        error = 0.0 if kind == EXACT else float(error)
        for name, value in (("kind", kind), ("error", error), ("offsets", offsets), ("keys", keys),
                            ("counts", counts)):
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
            object.__setattr__(out, name, value)
        return out

    @staticmethod
    def empty(n_features: int, kind: str, error: float = 0.0) -> Distribution:
        """A distribution of ``n_features`` features with no values."""
        z = np.zeros(0, np.int64)
        return Distribution(kind, error, np.zeros(n_features + 1, np.int64), z, z)

    @staticmethod
    def from_dense(hist: np.ndarray, offset: int = 0) -> Distribution:
        """Exact distribution of a dense histogram ``hist[f, b]`` (bin ``b`` holds ``b + offset``)."""
        hist = np.asarray(hist, np.int64)
        rows, cols = np.nonzero(hist)
        offsets = np.zeros(hist.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=hist.shape[0]), out=offsets[1:])
        return Distribution(EXACT, 0.0, offsets, cols.astype(np.int64) + offset, hist[rows, cols])

    @property
    def bits(self) -> int:
        """Mantissa bits of the grid (52 for exact keys)."""
        return MANTISSA_BITS if self.kind == EXACT else grid_bits(self.error)

    @property
    def n_features(self) -> int:
        return self.offsets.size - 1

    def total(self) -> np.ndarray:
        """Values counted per feature, int64[F]."""
        cum = np.concatenate([[0], np.cumsum(self.counts)])
        return cum[self.offsets[1:]] - cum[self.offsets[:-1]]

    def feature(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, counts) of feature ``f``."""
        a, b = self.offsets[f], self.offsets[f + 1]
        return self.keys[a:b], self.counts[a:b]

    def values(self, f: int) -> np.ndarray:
        """The value each occupied key of feature ``f`` stands for (float64)."""
        keys, _ = self.feature(f)
        return keys.astype(np.float64) if self.kind == EXACT else grid_value(keys, self.bits)

    # -- algebra --------------------------------------------------------------
    def check_compatible(self, other: Distribution) -> None:
        if self.n_features != other.n_features:
            raise IncompatibleStatsError(
                f"cannot merge distributions of {other.n_features} and {self.n_features} features"
            )
        if self.kind != other.kind or self.bits != other.bits:
            raise IncompatibleStatsError(
                f"cannot merge a {other.describe()} into a {self.describe()}: their grids differ; "
                f"accumulate both from data of one kind (exact: bool/8/16-bit integers) with one "
                f"quantile_error"
            )

    def describe(self) -> str:
        if self.kind == EXACT:
            return "distribution of exact values"
        return f"distribution on a log grid of {self.bits} mantissa bits (quantile_error={self.error:g})"

    def merge(self, other: Distribution) -> Distribution:
        """Counts of both, added (exact; any order gives the same arrays)."""
        self.check_compatible(other)
        o, k, c = K.merge_counts(self.offsets, self.keys, self.counts, other.offsets, other.keys, other.counts)
        return Distribution._trusted(self.kind, max(self.error, other.error), o, k, c)

    def select(self, indices: Sequence[int]) -> Distribution:
        parts = [self.feature(int(i) % self.n_features) for i in indices]
        return Distribution.stack(self.kind, self.error, parts)

    @staticmethod
    def concat(parts: Sequence[Distribution]) -> Distribution:
        first = parts[0]
        for p in parts[1:]:
            if p.kind != first.kind or p.bits != first.bits:
                raise IncompatibleStatsError(
                    f"cannot keep a {p.describe()} beside a {first.describe()} in one set of statistics; "
                    f"select features of one kind (bool/8/16-bit integers, or floats and wider "
                    f"integers with one quantile_error), or drop histogram=True"
                )
        return Distribution.stack(first.kind, max(p.error for p in parts),
                                  [p.feature(f) for p in parts for f in range(p.n_features)])

    @staticmethod
    def stack(kind: str, error: float, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> Distribution:
        """A distribution from per-feature (keys, counts) pairs."""
        sizes = np.array([len(k) for k, _ in parts], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        z = np.zeros(0, np.int64)
        keys = np.concatenate([k for k, _ in parts] or [z])
        counts = np.concatenate([c for _, c in parts] or [z])
        return Distribution(kind, error, offsets, keys, counts)

    def equals(self, other: object) -> bool:
        return (isinstance(other, Distribution) and self.kind == other.kind and self.error == other.error
                and all(np.array_equal(getattr(self, n), getattr(other, n)) for n in ("offsets", "keys", "counts")))

    # -- quantiles ------------------------------------------------------------
    def quantile(self, qs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """float64[len(qs), F]: numpy's "linear" quantile on the keys' values, within [lo, hi].

        The order statistics at the first and last rank are ``lo`` and ``hi``
        themselves (the exact min and max), so ``q=0`` and ``q=1`` are exact.
        """
        out = np.full((qs.size, self.n_features), np.nan)
        totals = self.total()
        for f in range(self.n_features):
            n = int(totals[f])
            if n == 0 or np.isnan(lo[f]) or np.isnan(hi[f]):  # a NaN entered: numpy gives NaN
                continue
            _, counts = self.feature(f)
            values = np.clip(self.values(f), lo[f], hi[f])
            cum = np.cumsum(counts)
            virtual = (n - 1) * qs
            prev = np.floor(virtual)
            gamma = virtual - prev
            prev_i = prev.astype(np.int64)
            next_i = np.minimum(prev_i + 1, n - 1)
            a, b = (np.where(i == 0, lo[f], np.where(i == n - 1, hi[f], values[np.searchsorted(cum, i, side="right")]))
                    for i in (prev_i, next_i))
            with np.errstate(invalid="ignore", over="ignore"):
                diff = b - a
                res = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)  # numpy's _lerp
                # ends more than the float64 range apart: weigh them instead
                huge = ~np.isfinite(diff) & np.isfinite(a) & np.isfinite(b)
                res = np.where(huge, a * (1 - gamma) + b * gamma, res)
                res = np.where(gamma == 0, a, res)
                # an infinite end wins wherever it has weight (numpy's lerp gives NaN there)
                res = np.where(np.isinf(a), a, np.where(np.isinf(b) & (gamma > 0), b, res))
            out[:, f] = np.clip(res, lo[f], hi[f])
        return out

    def ks_distance(self, other: Distribution) -> np.ndarray:
        """Kolmogorov-Smirnov distance per feature (NaN where either side is empty)."""
        self.check_compatible(other)
        out = np.full(self.n_features, np.nan)
        for f in range(self.n_features):
            ka, ca = self.feature(f)
            kb, cb = other.feature(f)
            if ca.sum() == 0 or cb.sum() == 0:
                continue
            grid = np.union1d(ka, kb)
            fa = np.cumsum(np.bincount(np.searchsorted(grid, ka), ca, grid.size)) / ca.sum()
            fb = np.cumsum(np.bincount(np.searchsorted(grid, kb), cb, grid.size)) / cb.sum()
            out[f] = float(np.max(np.abs(fa - fb)))
        return out


def family(dtype: np.dtype) -> str:
    """Which distribution a dtype keeps: ``"hist8"`` (dense 256 bins), ``"exact"`` or ``"grid"``."""
    if dtype.kind in "biu" and dtype.itemsize == 1:
        return "hist8"
    if dtype.kind in "iu" and dtype.itemsize == 2:
        return EXACT
    return GRID


def count_batch(view: np.ndarray, kind: str, error: float, keep_inf: bool) -> Distribution:
    """The distribution of one (O, F, I) batch view: exact integer keys, or log-grid keys.

    NaN never enters (quantiles of data holding NaN are NaN, as numpy's);
    infinities enter only with ``keep_inf``.
    """
    drop = np.int64(MANTISSA_BITS - grid_bits(error)) if kind == GRID else np.int64(0)
    if kind == EXACT:
        mode, x = K.KEY_VALUE, view
    elif view.dtype == np.float32:
        mode, x = K.KEY_F32, view.view(np.int32)
    else:
        mode, x = K.KEY_F64, view.astype(np.float64, copy=False).view(np.int64)
    if mode != K.KEY_VALUE and view.shape[2] == 1:  # rows of features: try the fast kernel
        ok, *found = K.dist_counts_rows(x[:, :, 0], view[:, :, 0], mode, drop, keep_inf)
        if ok:
            return Distribution._trusted(kind, error, *found)
    return Distribution._trusted(kind, error, *K.dist_counts(x, view, mode, drop, keep_inf))


def exact_sums(dist: Distribution) -> tuple[list[int], list[int], np.ndarray, np.ndarray]:
    """Exact ``sum(x)``, ``sum(x**2)``, min and max per feature of an exact distribution."""
    keys, counts = dist.keys, dist.counts
    starts = dist.offsets[:-1]
    seen = np.diff(dist.offsets) > 0
    big = keys.size and (int(np.abs(keys).max()) ** 2 * int(counts.sum()) >= 1 << 62)
    k, c = (keys.astype(object), counts.astype(object)) if big else (keys, counts)
    cum = np.concatenate([np.zeros(1, k.dtype), np.cumsum(c * k)])
    cum2 = np.concatenate([np.zeros(1, k.dtype), np.cumsum(c * k * k)])
    s = cum[dist.offsets[1:]] - cum[starts]
    q = cum2[dist.offsets[1:]] - cum2[starts]
    lo = np.where(seen, keys[np.minimum(starts, max(keys.size - 1, 0))] if keys.size else 0, np.nan)
    hi = np.where(seen, keys[np.maximum(dist.offsets[1:] - 1, 0)] if keys.size else 0, np.nan)
    return [int(v) for v in s], [int(v) for v in q], lo.astype(np.float64), hi.astype(np.float64)
