"""The statistics of a dataset: an immutable value with an exact merge algebra.

:class:`Stats` holds, per feature, ``count``, ``nan_count``, ``mean``, ``m2``
(sum of squared deviations from the mean), ``min``, ``max``; optionally an
exact 256-bin histogram (8-bit input) and, for integer input, the exact integer
sums from which ``mean`` and ``m2`` are rounded once. Merging two ``Stats``
gives what one pass over both inputs would have given: bit for bit for integer
input, to about 1e-15 relative for floats (Chan, Golub and LeVeque's update).

Float statistics also keep the per-feature ``shift`` the accumulator worked
about (a value of the data) and the mean relative to it, ``shifted_mean``:
Chan's update on plain means loses digits when ``|mean| >> std`` (the mean is
rounded to the spacing of its magnitude), while the shifted mean keeps them, so
merges of stored or in-memory statistics stay as accurate as one pass.

``masked_count`` counts the values skipped by a mask or ``ignore_value`` (in
neither ``count`` nor ``nan_count``); zeros when not given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _kernels as K
from .distribution import Distribution
from .errors import IncompatibleStatsError, StreamnormError

__all__ = [
    "Stats", "chan_merge", "common_dtype", "dtype_name", "exact_ints", "exact_moments",
    "exact_moments_array", "HISTOGRAM_BINS",
]

HISTOGRAM_BINS = 256
INTEGER_KINDS = frozenset("biu")
# The per-feature float/int arrays of a Stats, in field order.
_FEATURE_ARRAYS = ("count", "nan_count", "mean", "m2", "min", "max", "shift", "shifted_mean", "masked_count")


def chan_merge(
    n_a: np.ndarray,
    mean_a: np.ndarray,
    m2_a: np.ndarray,
    n_b: np.ndarray,
    mean_b: np.ndarray,
    m2_b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge two sets of moments (Chan, Golub and LeVeque, 1979).

    ``d = mB - mA; m = mA + d*nB/n; M2 = M2A + M2B + d*d*nA*nB/n``, elementwise,
    with empty sides (``n == 0``) passing the other side through unchanged.

    The terms are ordered so that nothing overflows unless the result does:
    ``d`` is carried as ``mB/2 - mA/2``, the mean moves from the side holding
    more values, and ``d*d*nA*nB/n`` is ``4 * ((d/2 * nA*nB/n) * d/2)``. A side
    with a non-finite mean gives numpy's answer: the sum of the means (inf,
    -inf or NaN) and a NaN ``M2``.

    Examples
    --------
    >>> n, m, m2 = chan_merge(np.array([2.]), np.array([1.]), np.array([2.]),
    ...                       np.array([2.]), np.array([5.]), np.array([2.]))
    >>> float(m[0]), float(m2[0])
    (3.0, 20.0)
    >>> big = np.array([1.7e308])
    >>> _, m, m2 = chan_merge(np.array([1.]), -big, np.array([0.]), np.array([1.]), big, np.array([0.]))
    >>> float(m[0]), float(m2[0])
    (0.0, inf)
    """
    inputs = [np.asarray(v, dtype=np.float64) for v in (n_a, mean_a, m2_a, n_b, mean_b, m2_b)]
    shape = inputs[0].shape
    if any(v.shape != shape for v in inputs):
        inputs = np.broadcast_arrays(*inputs)
        shape = inputs[0].shape
    flat = [np.ascontiguousarray(v).reshape(-1) for v in inputs]
    out = [np.empty(flat[0].size) for _ in range(3)]
    K.chan_arrays(*flat, *out)  # one loop, the same arithmetic as the kernels' merges
    n, mean, m2 = (v.reshape(shape) for v in out)
    return n, mean, m2


def exact_moments(count: int, total: int, total_sq: int) -> tuple[float, float]:
    """Mean and M2 of integers from their exact sums, each rounded once.

    ``M2 = sum(x**2) - sum(x)**2 / n`` is exact in rational arithmetic, so the
    only rounding is the final conversion to float64.

    Examples
    --------
    >>> exact_moments(3, 6, 14)   # 1, 2, 3
    (2.0, 2.0)
    """
    if count == 0:
        return float("nan"), 0.0
    # int / int is correctly rounded in Python whatever the size of the ints,
    # i.e. exactly float(Fraction(a, b)), without building the fractions.
    return total / count, (count * total_sq - total * total) / count


_INT64_MAX = int(np.iinfo(np.int64).max)
_FLOAT_EXACT = 1 << 53  # every integer of at most this magnitude is a float64
_SQRT_INT64_MAX = 3_037_000_499  # isqrt(2**63 - 1): squares up to this fit in int64


def exact_ints(values: Sequence[int] | np.ndarray) -> np.ndarray:
    """Integers as an exact array: int64 when every value fits, else Python ints (object).

    Examples
    --------
    >>> exact_ints((1, -2)).dtype, exact_ints((1, 2**70)).dtype
    (dtype('int64'), dtype('O'))
    """
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        return np.array([int(v) for v in values], dtype=object)


def _int64_part(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of :func:`exact_ints`' values fit in int64, and those values (0 elsewhere)."""
    if values.dtype == np.int64:
        return np.ones(values.shape, dtype=bool), values
    fits = np.asarray((values >= -_INT64_MAX - 1) & (values <= _INT64_MAX), dtype=bool)
    return fits, np.where(fits, values, 0).astype(np.int64)


def _moments_in_float64(
    n: np.ndarray, s: np.ndarray, q: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where float64 gives ``exact_moments``' bits: (mask, mean, m2), valid under the mask.

    IEEE division of two exactly representable operands is correctly rounded,
    like Python's ``int / int``. So wherever ``count``, ``sum`` and
    ``count * sumsq - sum**2`` are computed exactly in int64 and are at most
    2**53 in magnitude, float64 division gives the same bits.
    """
    fast = (n > 0) & (n <= _FLOAT_EXACT)
    fast &= (s >= -_SQRT_INT64_MAX) & (s <= _SQRT_INT64_MAX)
    # q >= 0 keeps n * q - s * s inside int64 as well as n * q
    fast &= (q >= 0) & (q <= _INT64_MAX // np.where(fast, n, 1))
    n, s, q = (np.where(fast, v, 0) for v in (n, s, q))
    num = n * q - s * s
    fast &= (num >= -_FLOAT_EXACT) & (num <= _FLOAT_EXACT)
    denom = np.where(fast, n, 1).astype(np.float64)
    return fast, s.astype(np.float64) / denom, num.astype(np.float64) / denom


def exact_moments_array(
    count: Sequence[int] | np.ndarray,
    total: Sequence[int] | np.ndarray,
    total_sq: Sequence[int] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`exact_moments` of many features at once, bit for bit the same.

    Where ``count``, ``sum`` and ``count * sumsq - sum**2`` are exact in int64
    and at most 2**53 in magnitude, float64 division of these exact operands
    is correctly rounded, like Python's ``int / int``: those features are
    computed with numpy at once; the others, one by one with Python's integers.

    Parameters
    ----------
    count, total, total_sq : sequence of int or integer array, shape (F,)
        Python ints of any size are accepted for ``total`` and ``total_sq``.

    Returns
    -------
    mean, m2 : numpy.ndarray
        float64[F]; the mean is NaN and m2 0 where ``count == 0``.

    Examples
    --------
    >>> mean, m2 = exact_moments_array([3, 0, 2], [6, 0, 2**80], [14, 0, 2**159])
    >>> mean.tolist(), m2.tolist()
    ([2.0, nan, 6.044629098073146e+23], [2.0, 0.0, 0.0])
    """
    n = exact_ints(count)
    s, q = exact_ints(total), exact_ints(total_sq)
    if not n.shape == s.shape == q.shape or n.ndim != 1:
        raise StreamnormError(
            f"exact moments need count, sums and sums of squares of one shape (F,), got "
            f"{n.shape}, {s.shape} and {q.shape}"
        )
    (fits_n, n64), (fits_s, s64), (fits_q, q64) = (_int64_part(v) for v in (n, s, q))
    fast, mean, m2 = _moments_in_float64(n64, s64, q64)
    fast &= fits_n & fits_s & fits_q
    mean, m2 = np.where(fast, mean, np.nan), np.where(fast, m2, 0.0)
    for f in np.flatnonzero(~fast & (n != 0)).tolist():
        mean[f], m2[f] = exact_moments(int(n[f]), int(s[f]), int(q[f]))
    return mean, m2


def dtype_name(dtype: Any) -> str:
    """The name statistics record for a source dtype: numpy's, or ``"bfloat16"``.

    bfloat16 (torch's, or ml_dtypes') has no numpy dtype of its own; it is kept
    by name so that statistics say what the data was.

    Examples
    --------
    >>> dtype_name(np.uint8), dtype_name("float32"), dtype_name("bfloat16")
    ('uint8', 'float32', 'bfloat16')
    """
    name = str(dtype).removeprefix("torch.")
    if name == "bfloat16":
        return name
    try:
        return np.dtype(dtype).name
    except (TypeError, ValueError):
        raise StreamnormError(
            f"unknown dtype {dtype!r}: statistics record numpy dtype names such as 'uint8' or "
            f"'float32' (or 'bfloat16')"
        ) from None


def common_dtype(names: Iterable[str]) -> str:
    """The dtype recorded for statistics of data of several dtypes (numpy's promotion).

    bfloat16 promotes like float16 does: with itself it stays, with anything
    else it becomes float32 or wider.

    Examples
    --------
    >>> common_dtype(["uint8", "int8"]), common_dtype(["bfloat16", "float16"])
    ('int16', 'float32')
    """
    names = list(names)
    if names and all(n == "bfloat16" for n in names):
        return "bfloat16"
    return np.result_type(*[np.dtype("float32" if n == "bfloat16" else n) for n in names]).name


def _int_tuple(values: Any) -> tuple[int, ...]:
    """Exact sums as a tuple of Python ints (``tolist`` converts integer arrays in bulk)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        return tuple(values.tolist())
    return tuple(map(int, values))


def _add_exact(columns: Sequence[Sequence[int]]) -> np.ndarray:
    """Elementwise exact sum of integer columns: in int64 when no sum can overflow it."""
    arrays = [exact_ints(c) for c in columns]
    if all(a.dtype == np.int64 for a in arrays):
        bound = sum(max(int(a.max(initial=0)), -int(a.min(initial=0))) for a in arrays)
        if bound <= _INT64_MAX:
            return np.sum(arrays, axis=0, dtype=np.int64)
    return np.sum([a.astype(object) for a in arrays], axis=0)


def _readonly(values: Any, dtype: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.array(values, dtype=dtype, copy=True)
    if arr.shape != shape:
        raise StreamnormError(f"Stats.{name} must have shape {shape}, got {arr.shape}")
    arr.setflags(write=False)
    return arr


def _shift_pair(
    mean: np.ndarray, shift: Any, shifted_mean: Any, names: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Check ``mean == shift + shifted_mean`` and return the canonical pair.

    Without a shift, the mean is its own shift (today's merge). Where the mean
    is not finite the pair is ``(0, mean)``: nothing is left to be accurate
    about, and the non-finite value must travel through merges.
    """
    nf = len(names)
    finite = np.isfinite(mean)
    if shift is None and shifted_mean is None:
        return np.where(finite, mean, 0.0), np.where(finite, 0.0, mean)
    if shift is None or shifted_mean is None:
        raise StreamnormError("shift and shifted_mean must be given together")
    shift = np.array(shift, dtype=np.float64, copy=True)
    shifted_mean = np.array(shifted_mean, dtype=np.float64, copy=True)
    for name, arr in (("shift", shift), ("shifted_mean", shifted_mean)):
        if arr.shape != (nf,):
            raise StreamnormError(f"Stats.{name} must have shape {(nf,)}, got {arr.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        bad = finite & ~(np.isfinite(shift) & (shift + shifted_mean == mean))
    if bad.any():
        f = int(np.flatnonzero(bad)[0])
        raise StreamnormError(
            f"Stats.mean of feature {names[f]!r} is {mean[f]!r} but shift + shifted_mean is "
            f"{shift[f]!r} + {shifted_mean[f]!r}; pass the mean that the accumulator gave, or "
            f"leave shift and shifted_mean out"
        )
    return np.where(finite, shift, 0.0), np.where(finite, shifted_mean, mean)


def _chan_tree(items: Sequence[Stats]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chan's update over ``items`` about one common shift: (shift, shifted mean, m2).

    Each item's shifted mean is moved to the shift of the first item that has
    data; shifts are values of the data, so that move is (nearly) exact and
    the merge sees deviations of the size of the spread, not rounded means.
    """
    shift = np.zeros(items[0].n_features)
    found = np.zeros(items[0].n_features, dtype=bool)
    for item in items:
        take = ~found & (item.count > 0) & np.isfinite(item.mean)
        shift = np.where(take, item.shift, shift)
        found |= take
    with np.errstate(invalid="ignore", over="ignore"):
        moved = [item.shifted_mean + (item.shift - shift) for item in items]
    # Data wider than the float64 range: shifted means would overflow, so such
    # features merge about shift 0 (plain means), as the accumulator does.
    wide = np.zeros(items[0].n_features, dtype=bool)
    for item, m in zip(items, moved):
        wide |= (item.count > 0) & np.isfinite(item.mean) & ~np.isfinite(m)
    if wide.any():
        shift = np.where(wide, 0.0, shift)
        moved = [np.where(wide, item.mean, m) for item, m in zip(items, moved)]
    level = [(item.count, m, item.m2) for item, m in zip(items, moved)]
    # A balanced tree, ((a+b)+(c+d))+e: its shape depends only on the number
    # of items, so the same items in the same order give the same bits
    # wherever they were computed, and rounding grows with log(n), not n.
    while len(level) > 1:
        paired = [chan_merge(*level[i], *level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    _, shifted_mean, m2 = level[0]
    return shift, shifted_mean, m2


def _same_bits(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return a.tobytes() == b.tobytes()


@dataclass(frozen=True, eq=False)
class Stats:
    """Per-feature statistics of a dataset (or of one split of it).

    Build one with :class:`~streamnorm.StatsAccumulator` or
    :func:`~streamnorm.compute_stats`; load one with
    :meth:`~streamnorm.StatsStore.load`.

    Parameters
    ----------
    layout : str
        Layout of the batches the statistics came from (``"NCHW"``...).
    feature_names : sequence of str
        One name per feature.
    dtype : str
        numpy name of the source dtype (``"uint8"``, ``"float32"``...).
    count, nan_count : array of int64, shape (F,)
        Values that entered the statistics; non-finite values met.
    mean, m2, min, max : array of float64, shape (F,)
        ``m2`` is the sum of squared deviations from the mean.
    histogram : array of int64, shape (F, 256), optional
        Exact counts per value for 8-bit input (bin ``b`` holds value
        ``b - 128`` for int8, ``b`` otherwise).
    int_sum, int_sumsq : tuple of int, optional
        Exact ``sum(x)`` and ``sum(x**2)`` for integer input.
    masked_count : array of int64, shape (F,), optional
        Values skipped by a mask or ``ignore_value`` (in neither ``count``
        nor ``nan_count``); zeros when not given.
    distribution : Distribution, optional
        Each feature's distribution (``histogram=True`` on data other than
        8-bit): exact counts per value for 16-bit integers, counts on a fixed
        log grid otherwise. 8-bit data keeps ``histogram`` instead.
    shift, shifted_mean : array of float64, shape (F,), optional
        The value each feature was accumulated about and the mean relative to
        it, so that ``mean == shift + shifted_mean`` (in float64). Merges use
        them to stay accurate when ``|mean| >> std``. Given together or not at
        all; left out, ``shift`` is the mean and ``shifted_mean`` 0 (where the
        mean is not finite: 0 and the mean).

    Notes
    -----
    ``var``/``std`` use ``ddof=0`` like numpy and scikit-learn;
    :meth:`variance` takes any ``ddof``. A feature with ``count == 0`` has NaN
    ``mean``, ``min`` and ``max``.

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> x = np.arange(12, dtype=np.uint8).reshape(4, 3)
    >>> s = sn.compute_stats([x[:2], x[2:]], layout="NF")
    >>> s.mean.tolist(), s.max.tolist()
    ([4.5, 5.5, 6.5], [9.0, 10.0, 11.0])
    >>> (s + s).count.tolist()
    [8, 8, 8]
    """

    layout: str
    feature_names: tuple[str, ...]
    dtype: str
    count: np.ndarray
    nan_count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    histogram: np.ndarray | None = None
    int_sum: tuple[int, ...] | None = None
    int_sumsq: tuple[int, ...] | None = None
    shift: np.ndarray | None = None
    shifted_mean: np.ndarray | None = None
    masked_count: np.ndarray | None = None
    distribution: Distribution | None = None

    def __post_init__(self) -> None:
        names = tuple(map(str, self.feature_names))
        nf = len(names)
        if len(set(names)) != nf:
            raise StreamnormError(f"feature names must be unique, got {list(names)}")
        set_ = object.__setattr__
        set_(self, "feature_names", names)
        set_(self, "layout", str(self.layout))
        set_(self, "dtype", dtype_name(self.dtype))
        if self.masked_count is None:
            set_(self, "masked_count", np.zeros(nf, np.int64))
        for field in ("count", "nan_count", "masked_count"):
            set_(self, field, _readonly(getattr(self, field), np.int64, (nf,), field))
        for field in ("mean", "m2", "min", "max"):
            set_(self, field, _readonly(getattr(self, field), np.float64, (nf,), field))
        if self.histogram is not None:
            set_(
                self,
                "histogram",
                _readonly(self.histogram, np.int64, (nf, HISTOGRAM_BINS), "histogram"),
            )
        if (self.int_sum is None) != (self.int_sumsq is None):
            raise StreamnormError("int_sum and int_sumsq must be given together")
        if self.int_sum is not None:
            for field in ("int_sum", "int_sumsq"):
                values = _int_tuple(getattr(self, field))
                if len(values) != nf:
                    raise StreamnormError(f"Stats.{field} must have {nf} values")
                set_(self, field, values)
        if self.distribution is not None:
            if not isinstance(self.distribution, Distribution) or self.distribution.n_features != nf:
                raise StreamnormError(f"Stats.distribution must be a Distribution of {nf} features")
            if self.histogram is not None:
                raise StreamnormError("Stats take a histogram (8-bit data) or a distribution, not both")
        shift, shifted_mean = _shift_pair(self.mean, self.shift, self.shifted_mean, names)
        set_(self, "shift", _readonly(shift, np.float64, (nf,), "shift"))
        set_(self, "shifted_mean", _readonly(shifted_mean, np.float64, (nf,), "shifted_mean"))

    # -- derived values -------------------------------------------------
    @property
    def n_features(self) -> int:
        """Number of features (channels, columns)."""
        return len(self.feature_names)

    @property
    def is_exact(self) -> bool:
        """True when exact integer sums back ``mean`` and ``m2``."""
        return self.int_sum is not None

    def variance(self, ddof: int = 0) -> np.ndarray:
        """``m2 / (count - ddof)``; NaN where ``count <= ddof``.

        Examples
        --------
        >>> import numpy as np, streamnorm as sn
        >>> s = sn.compute_stats([np.array([[1.0], [2.0], [4.0]])], layout="NF")
        >>> round(float(s.variance(ddof=1)[0]), 12)
        2.333333333333
        """
        if isinstance(ddof, (bool, np.bool_)) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
            raise StreamnormError(
                f"ddof must be an integer >= 0 (0: population, 1: sample variance), got {ddof!r}"
            )
        denom = self.count.astype(np.float64) - ddof
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, self.m2 / np.where(denom > 0, denom, 1.0), np.nan)

    @property
    def var(self) -> np.ndarray:
        """Population variance (``ddof=0``), float64[F]."""
        return self.variance(0)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (``ddof=0``), float64[F]."""
        return np.sqrt(self.var)

    @property
    def histogram_offset(self) -> int:
        """Value held by histogram bin 0 (-128 for int8, 0 otherwise)."""
        return -128 if self.dtype == "int8" else 0

    @property
    def has_distribution(self) -> bool:
        """True when quantiles are known (``histogram=True`` at accumulation)."""
        return self.histogram is not None or self.distribution is not None

    @property
    def quantile_error(self) -> float:
        """Relative bound of :meth:`quantile`: 0.0 where exact (bool, 8/16-bit), NaN without a distribution."""
        if self.histogram is not None:
            return 0.0
        return float("nan") if self.distribution is None else self.distribution.error

    def sparse_distribution(self) -> Distribution:
        """Each feature's distribution as a :class:`Distribution`, 8-bit histograms included.

        Raises :class:`StreamnormError` (naming ``histogram=True``) without one.

        Examples
        --------
        >>> import numpy as np, streamnorm as sn
        >>> s = sn.compute_stats(np.array([[3], [3], [7]], np.uint8), layout="NF", histogram=True)
        >>> d = s.sparse_distribution()
        >>> d.values(0).tolist(), d.counts.tolist()
        ([3.0, 7.0], [2, 1])
        """
        if not self.has_distribution:
            raise StreamnormError(
                "these statistics carry no distribution; accumulate them with "
                "StatsAccumulator(..., histogram=True) (or compute_stats(..., histogram=True))"
            )
        if self.distribution is not None:
            return self.distribution
        return Distribution.from_dense(self.histogram, self.histogram_offset)

    def quantile(self, q: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """Quantiles from the distribution, as ``numpy.quantile`` computes them.

        For bool, 8- and 16-bit integers they equal numpy's default
        ``"linear"`` method bit for bit. On the log grid (other dtypes), with
        ``lo``/``hi`` numpy's ``method="lower"``/``"higher"`` quantiles, some
        ``v`` in ``[lo, hi]`` has ``|result - v| <= quantile_error * |v|``;
        ``q=0`` and ``q=1`` give the exact min and max, and no result leaves
        ``[min, max]``. The bound is relative to the value: data far from zero
        (offset data, such as 1000 +- 0.01) gets an absolute resolution of
        about ``quantile_error * |value|``; shift such data (or pick a smaller
        ``quantile_error``) when that is too coarse.

        Examples
        --------
        >>> import numpy as np, streamnorm as sn
        >>> x = np.arange(1, 1001, dtype=np.float32).reshape(-1, 1)
        >>> s = sn.compute_stats(x, layout="NF", histogram=True)
        >>> s.quantile_error, s.quantile([0.0, 1.0])[:, 0].tolist()   # min and max are exact
        (0.001, [1.0, 1000.0])
        >>> bool(abs(s.median[0] - np.median(x)) <= 1e-3 * 501)
        True

        Parameters
        ----------
        q : float or sequence of float
            Quantile(s) in [0, 1].

        Returns
        -------
        numpy.ndarray
            float64[F] for a scalar ``q``; float64[len(q), F] otherwise.

        Raises
        ------
        StreamnormError
            When the statistics have no distribution (accumulate with
            ``histogram=True``) or ``q`` is outside [0, 1].
        """
        if not self.has_distribution:
            raise StreamnormError(
                "these statistics carry no distribution, so quantiles are unknown; accumulate "
                "them with StatsAccumulator(..., histogram=True) (or compute_stats(..., histogram=True))"
            )
        try:
            qs = np.asarray(q, dtype=np.float64)
        except (TypeError, ValueError):
            raise StreamnormError(f"q must be a number or a sequence of numbers in [0, 1], got {q!r}") from None
        if qs.ndim > 1:
            raise StreamnormError(
                f"q must be a number or a flat sequence of numbers, got shape {qs.shape}: {q!r}"
            )
        if np.any(~((qs >= 0) & (qs <= 1))):
            raise StreamnormError(f"quantiles must be in [0, 1], got {q!r}")
        out = self.sparse_distribution().quantile(np.atleast_1d(qs), self.min, self.max)
        return out[0] if qs.ndim == 0 else out

    @property
    def median(self) -> np.ndarray:
        """Median per feature (needs a distribution; exact where :attr:`quantile_error` is 0)."""
        return self.quantile(0.5)

    @property
    def iqr(self) -> np.ndarray:
        """Interquartile range per feature (needs a distribution; exact where :attr:`quantile_error` is 0)."""
        q1, q3 = self.quantile([0.25, 0.75])
        return q3 - q1

    # -- algebra -------------------------------------------------------
    def _check_mergeable(self, other: Stats) -> None:
        if not isinstance(other, Stats):
            raise IncompatibleStatsError(f"cannot merge Stats with {type(other).__name__}")
        if self.layout != other.layout:
            raise IncompatibleStatsError(
                f"cannot merge statistics of layout {self.layout!r} with {other.layout!r}"
            )
        if self.feature_names != other.feature_names:
            raise IncompatibleStatsError(
                f"cannot merge statistics of different features: {list(self.feature_names)[:8]} "
                f"vs {list(other.feature_names)[:8]}"
            )
        if (self.histogram is None) != (other.histogram is None):
            raise IncompatibleStatsError(
                "cannot merge statistics with a histogram and statistics without one; "
                "accumulate both with the same histogram setting"
            )
        if (self.distribution is None) != (other.distribution is None):
            raise IncompatibleStatsError(
                f"cannot merge statistics of {self.dtype} data with a distribution of another kind "
                f"({other.dtype} data); accumulate both from one kind of dtype"
            )
        if self.histogram is not None and self.histogram_offset != other.histogram_offset:
            raise IncompatibleStatsError(
                f"cannot merge histograms of {self.dtype} and {other.dtype} data"
            )
        if self.distribution is not None:
            self.distribution.check_compatible(other.distribution)

    def merge(self, other: Stats) -> Stats:
        """Statistics of both inputs together, as one pass over both would give.

        Integer statistics merge exactly (bit-identical in any order); float
        statistics by Chan's update. Layout and feature names must match.
        """
        return Stats.merge_all([self, other])

    @staticmethod
    def merge_all(items: Iterable[Stats]) -> Stats:
        """Merge any number of statistics (shards, folds, ranks) at once.

        Exact integer sums are added first and rounded once, so merging many
        integer statistics costs one rational rounding per feature, not one
        per pair. Float statistics are merged with Chan's update as a balanced
        tree in the order given, about one common shift (see ``shift``), so
        the result is as accurate as one pass over all the data, also where
        ``|mean| >> std``.

        Examples
        --------
        >>> import numpy as np, streamnorm as sn
        >>> x = np.arange(30, dtype=np.uint8).reshape(10, 3)
        >>> parts = [sn.compute_stats(x[i:i + 2], layout="NF") for i in range(0, 10, 2)]
        >>> sn.Stats.merge_all(parts).equals(sn.compute_stats(x, layout="NF"))
        True

        Offset floats merge as accurately as one pass (three values near 1000
        with a spread of 1e-6; Chan on the plain means would be off by 6e-8):

        >>> y = np.array([[1000.0], [1000.000001], [1000.000002]])
        >>> halves = [sn.compute_stats([y[:1]], layout="NF"), sn.compute_stats([y[1:]], layout="NF")]
        >>> sn.Stats.merge_all(halves).m2 == sn.compute_stats([y], layout="NF").m2
        array([ True])
        """
        items = list(items)
        if not items:
            raise StreamnormError("merge_all needs at least one Stats")
        first = items[0]
        for other in items[1:]:
            first._check_mergeable(other)
        if len(items) == 1:
            return first
        count = sum(item.count for item in items)
        nan_count = sum(item.nan_count for item in items)
        masked_count = sum(item.masked_count for item in items)
        dtype = common_dtype(item.dtype for item in items)
        histogram = None if first.histogram is None else sum(item.histogram for item in items)
        distribution = first.distribution
        for item in items[1:]:
            distribution = None if distribution is None else distribution.merge(item.distribution)
        lo, hi = first.min, first.max
        seen = first.count > 0
        for item in items[1:]:
            has = item.count > 0
            lo = np.where(~seen, item.min, np.where(has, np.minimum(lo, item.min), lo))
            hi = np.where(~seen, item.max, np.where(has, np.maximum(hi, item.max), hi))
            seen = seen | has
        if all(item.int_sum is not None for item in items):
            sums = _add_exact([item.int_sum for item in items])
            sumsqs = _add_exact([item.int_sumsq for item in items])
            mean, m2 = exact_moments_array(count, sums, sumsqs)
            int_sum, int_sumsq = tuple(sums.tolist()), tuple(sumsqs.tolist())
            shift = shifted_mean = None
        else:
            int_sum = int_sumsq = None
            shift, shifted_mean, m2 = _chan_tree(items)
            with np.errstate(invalid="ignore", over="ignore"):
                mean = shift + shifted_mean
        return Stats(
            layout=first.layout, feature_names=first.feature_names, dtype=dtype,
            count=count, nan_count=nan_count, mean=mean, m2=m2, min=lo, max=hi,
            histogram=histogram, int_sum=int_sum, int_sumsq=int_sumsq,
            shift=shift, shifted_mean=shifted_mean, masked_count=masked_count,
            distribution=distribution,
        )

    def select(self, indices: Sequence[int]) -> Stats:
        """The statistics of some features only, in the order given.

        Every per-feature field (shifts and exact sums included) is kept.

        Examples
        --------
        >>> import numpy as np, streamnorm as sn
        >>> s = sn.compute_stats([np.arange(6.0).reshape(2, 3)], layout="NF")
        >>> t = s.select([2, 0])
        >>> t.feature_names, t.mean.tolist()
        (('2', '0'), [3.5, 1.5])
        """
        idx = [int(i) for i in indices]
        if any(not -self.n_features <= i < self.n_features for i in idx):
            raise StreamnormError(
                f"feature indices {idx} are out of range for {self.n_features} features"
            )
        per_feature = {f: getattr(self, f)[idx] for f in _FEATURE_ARRAYS}
        return Stats(
            layout=self.layout, feature_names=tuple(self.feature_names[i] for i in idx),
            dtype=self.dtype,
            histogram=None if self.histogram is None else self.histogram[idx],
            int_sum=None if self.int_sum is None else tuple(self.int_sum[i] for i in idx),
            int_sumsq=None if self.int_sumsq is None else tuple(self.int_sumsq[i] for i in idx),
            distribution=None if self.distribution is None else self.distribution.select(idx),
            **per_feature,
        )

    @staticmethod
    def concat(parts: Sequence[Stats], layout: str, dtype: str) -> Stats:
        """Statistics of several feature sets side by side, as one set.

        Every per-feature field (shifts included) is kept; the histogram when
        every part has one, and the exact sums when every part has them.

        Examples
        --------
        >>> import numpy as np, streamnorm as sn
        >>> a = sn.compute_stats([np.ones((2, 1))], layout="NF", feature_names=["a"])
        >>> b = sn.compute_stats([np.zeros((2, 1))], layout="NF", feature_names=["b"])
        >>> sn.Stats.concat([a, b], "NF", "float64").mean.tolist()
        [1.0, 0.0]
        """
        parts = list(parts)
        if not parts:
            raise StreamnormError("Stats.concat needs at least one Stats")
        hists = [p.histogram for p in parts]
        distribution = None
        if all(p.has_distribution for p in parts) and any(h is None for h in hists):
            # 8-bit bins join 16-bit or grid counts as sparse counts; exact and grid do not mix
            distribution = Distribution.concat([p.sparse_distribution() for p in parts])
        exact = all(p.int_sum is not None for p in parts)
        per_feature = {f: np.concatenate([getattr(p, f) for p in parts]) for f in _FEATURE_ARRAYS}
        return Stats(
            layout=layout, feature_names=tuple(n for p in parts for n in p.feature_names),
            dtype=dtype,
            histogram=None if any(h is None for h in hists) else np.concatenate(hists, axis=0),
            int_sum=tuple(v for p in parts for v in p.int_sum) if exact else None,
            int_sumsq=tuple(v for p in parts for v in p.int_sumsq) if exact else None,
            distribution=distribution,
            **per_feature,
        )

    def __add__(self, other: Stats) -> Stats:
        return self.merge(other)

    def __radd__(self, other: Any) -> Stats:
        if other == 0:  # lets sum([s1, s2, ...]) work
            return self
        return NotImplemented

    def equals(self, other: object) -> bool:
        """True when every field is identical, bit for bit (NaNs included)."""
        if not isinstance(other, Stats):
            return False
        return (
            self.layout == other.layout
            and self.feature_names == other.feature_names
            and self.dtype == other.dtype
            and all(_same_bits(getattr(self, f), getattr(other, f)) for f in
                    (*_FEATURE_ARRAYS, "histogram"))
            and self.int_sum == other.int_sum
            and self.int_sumsq == other.int_sumsq
            and (self.distribution is None) == (other.distribution is None)
            and (self.distribution is None or self.distribution.equals(other.distribution))
        )

    def __eq__(self, other: object) -> bool:
        return self.equals(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Stats(layout={self.layout!r}, dtype={self.dtype!r}, n_features={self.n_features}, "
            f"count={self.count.tolist()[:4]}, mean={np.round(self.mean, 6).tolist()[:4]}, "
            f"std={np.round(self.std, 6).tolist()[:4]}"
            f"{', histogram' if self.histogram is not None else ''}"
            f"{', distribution' if self.distribution is not None else ''})"
        )
