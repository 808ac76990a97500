"""Each normalization mode as an :class:`~streamnorm._affine.AffineMap`, from statistics or values.

A mode says where the center is and how wide a unit is:

========== ================ ==================== ========
mode       center           scale                offset
========== ================ ==================== ========
zscore     mean             1 / std              0
minmax     min              1 / (max - min)      0
symmetric  min              2 / (max - min)      -1
robust     median           1 / IQR              0
========== ================ ==================== ========

Constant features get a unit of 1, as in scikit-learn. Statistics that cannot
describe a feature (a NaN, infinite or negative variance, a non-finite mean,
minimum, maximum or quantile, too few values for ``ddof``) are refused with
an error naming the feature: they come from non-finite data accumulated with
``nan_policy="propagate"``, from overflow, or from a damaged file, and no
scale derived from them is right.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ._affine import AffineMap
from .errors import StreamnormError
from .stats import Stats

__all__ = ["RANGE_MODES", "known_range", "mean_std", "range_map", "robust", "zscore"]

#: Target interval of each range mode.
RANGE_MODES = {"minmax": (0.0, 1.0), "symmetric": (-1.0, 1.0)}
_EPS = np.finfo(np.float64).eps
_RECOMPUTE = (
    "recompute the statistics with nan_policy='omit' (skip non-finite values) or 'raise' "
    "(find them)"
)


def _refuse(stats: Stats, bad: np.ndarray, problem: str, label: str, values: list, todo: str) -> None:
    """Raise naming every feature flagged in ``bad`` (its name, index and ``label`` value)."""
    idx = np.flatnonzero(bad)
    if idx.size == 0:
        return
    named = ", ".join(
        f"{stats.feature_names[i]!r} (index {i}, {label} {values[i]})" for i in idx[:8]
    )
    more = f" and {idx.size - 8} more" if idx.size > 8 else ""
    raise StreamnormError(f"cannot normalize feature(s) {named}{more}: {problem}; {todo}")


def _check_finite(stats: Stats, values: np.ndarray, what: str) -> None:
    values = np.asarray(values, dtype=np.float64)
    _refuse(stats, ~np.isfinite(values), f"the {what} is not finite", what, values.tolist(),
            _RECOMPUTE)


def _constant(var: np.ndarray, mean: np.ndarray, count: np.ndarray) -> np.ndarray:
    # scikit-learn's _is_constant_feature: a variance within the rounding
    # error bound of the two-pass algorithm is indistinguishable from zero.
    n = count.astype(np.float64)
    with np.errstate(over="ignore"):
        bound = n * _EPS * var + (n * mean * _EPS) ** 2
    return var <= bound


def _unit(span: np.ndarray) -> np.ndarray:
    # scikit-learn's _handle_zeros_in_scale (MinMaxScaler, RobustScaler).
    return np.where(span < 10 * _EPS, 1.0, span)


def _exact_mean(stats: Stats) -> tuple[np.ndarray, np.ndarray | None]:
    """The mean as a float64 pair ``hi + lo``.

    Exact for integer data (its exact sums); for float data ``shift +
    shifted_mean`` without the rounding of their sum (Knuth's TwoSum), so an
    offset feature keeps the digits its statistics hold.
    """
    if not stats.is_exact:
        a, b = stats.shift, stats.shifted_mean
        with np.errstate(invalid="ignore", over="ignore"):
            hi = a + b
            bb = hi - a
            lo = (a - (hi - bb)) + (b - bb)
        lo = np.where(np.isfinite(lo), lo, 0.0)
        return stats.mean, (lo if lo.any() else None)
    hi = np.empty(stats.n_features)
    lo = np.empty(stats.n_features)
    for i, (total, n) in enumerate(zip(stats.int_sum, stats.count.tolist())):
        mean = Fraction(total, n)
        hi[i] = float(mean)
        lo[i] = float(mean - Fraction(hi[i]))
    return hi, lo


def zscore(stats: Stats, ddof: int) -> AffineMap:
    """``(x - mean) / std`` with the std of ``ddof``; constant features get std 1."""
    few = stats.count <= ddof
    _refuse(stats, few, f"ddof={ddof} needs more than {ddof} value(s)", "count",
            stats.count.tolist(), "use a smaller ddof or statistics of more data")
    _check_finite(stats, stats.mean, "mean")
    var = stats.variance(ddof)
    _refuse(stats, ~np.isfinite(var), "the variance is not finite", "variance", var.tolist(),
            _RECOMPUTE)
    _refuse(stats, var < 0, "the variance is negative, which no data gives", "variance",
            var.tolist(), "the statistics are damaged; recompute them")
    center, center_lo = _exact_mean(stats)
    std = np.sqrt(np.where(_constant(var, stats.mean, stats.count), 1.0, var))
    return AffineMap(center, 1.0 / std, np.zeros_like(std), center_lo=center_lo)


def range_map(stats: Stats, mode: str) -> AffineMap:
    """``[min, max] -> [low, high]`` of ``mode``; constant features map to ``low``."""
    bounds = [f"[{lo}, {hi}]" for lo, hi in zip(stats.min.tolist(), stats.max.tolist())]
    finite = np.isfinite(stats.min) & np.isfinite(stats.max)
    _refuse(stats, ~finite, "its minimum or maximum is not finite", "range", bounds, _RECOMPUTE)
    _refuse(stats, stats.max < stats.min, "its maximum is below its minimum", "range", bounds,
            "the statistics are damaged; recompute them")
    return _range(stats.min, stats.max, mode, lambda bad, span: _refuse(
        stats, bad, "max - min overflows float64", "range", bounds,
        "rescale the data before normalizing it"), given=False)


def _range(low: np.ndarray, high: np.ndarray, mode: str, refuse, *, given: bool) -> AffineMap:
    a, b = RANGE_MODES[mode]
    with np.errstate(over="ignore"):
        span = high - low
    refuse(~np.isfinite(span), span)
    scale = (b - a) / _unit(span)
    return AffineMap(low, scale, np.full_like(scale, a), upper=high, width=b - a,
                     upper_is_bound=given)


def robust(stats: Stats) -> AffineMap:
    """``(x - median) / IQR`` from the histogram; a zero IQR counts as 1."""
    if stats.histogram is None:
        raise StreamnormError(
            "mode='robust' needs the median and IQR, which only the exact histogram "
            "gives; accumulate 8-bit data with StatsAccumulator(..., histogram=True) "
            "(or use mode='zscore' or 'minmax')"
        )
    q1, med, q3 = stats.quantile([0.25, 0.5, 0.75])
    for q, name in ((q1, "first quartile"), (med, "median"), (q3, "third quartile")):
        _check_finite(stats, q, name)
    iqr = _unit(q3 - q1)
    return AffineMap(med, 1.0 / iqr, np.zeros_like(iqr))


def known_range(low: np.ndarray, high: np.ndarray, mode: str) -> AffineMap:
    """A given ``[low, high]`` per feature to the interval of ``mode``."""
    bad = ~(np.isfinite(low) & np.isfinite(high) & (high > low))
    if np.any(bad):
        i = int(np.argmax(bad))
        raise StreamnormError(
            f"the range of feature {i} is [{low[i]}, {high[i]}]; it needs finite low < high"
        )

    def refuse(over: np.ndarray, span: np.ndarray) -> None:
        if over.any():
            i = int(np.argmax(over))
            raise StreamnormError(
                f"the range of feature {i}, [{low[i]}, {high[i]}], is wider than float64 holds; "
                f"pass a narrower range"
            )

    return _range(low, high, mode, refuse, given=True)


def mean_std(mean: np.ndarray, std: np.ndarray) -> AffineMap:
    """``(x - mean) / std`` from known values."""
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise StreamnormError("mean must be finite and std finite and > 0")
    return AffineMap(mean, 1.0 / std, np.zeros_like(std))
