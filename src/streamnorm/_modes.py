"""Each normalization mode as an :class:`~streamnorm._affine.AffineMap`, from statistics or values.

A mode says where the center is and how wide a unit is:

========== ================ ==================== ========
mode       center           scale                offset
========== ================ ==================== ========
zscore     mean             1 / std              0
minmax     min              1 / (max - min)      0
symmetric  min              2 / (max - min)      -1
robust     median           1 / IQR              0
quantile   quantile q_lo    2 / (q_hi - q_lo)    -1
========== ================ ==================== ========

``robust`` and ``quantile`` read the statistics' distribution through
:meth:`Stats.quantile`, so they work for every dtype whose statistics carry
one (``histogram=True``). ``quantile`` maps the low quantile to -1 and the
high one to +1 and may clamp its output to [-1, 1] (``clip=True``).

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

__all__ = ["RANGE_MODES", "known_range", "mean_std", "quantile_map", "range_map", "robust", "zscore"]

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


def _quantiles(stats: Stats, qs: list[float], mode: str, names: list[str]) -> list[np.ndarray]:
    """``stats.quantile(qs)``, each checked finite; statistics without a distribution are refused."""
    try:
        values = stats.quantile(qs)
    except StreamnormError as exc:  # (qs are valid: what fails is the missing distribution)
        raise StreamnormError(
            f"mode={mode!r} needs each feature's distribution (its quantiles), which these statistics "
            f"do not carry; compute them with histogram=True (sn.compute_stats(..., histogram=True), "
            f"StatsAccumulator(..., histogram=True), streamnorm compute --histogram), or use "
            f"mode='zscore' or 'minmax' ({exc})"
        ) from None
    for q, name in zip(values, names):
        _check_finite(stats, q, name)
    return list(values)


def robust(stats: Stats) -> AffineMap:
    """``(x - median) / IQR`` from the distribution; a zero IQR counts as 1."""
    q1, med, q3 = _quantiles(stats, [0.25, 0.5, 0.75], "robust",
                             ["first quartile", "median", "third quartile"])
    iqr = _unit(q3 - q1)
    return AffineMap(med, 1.0 / iqr, np.zeros_like(iqr))


def check_quantiles(quantiles: object) -> tuple[float, float]:
    """``(low, high)`` with ``0 <= low < high <= 1``, or a clear error.

    Examples
    --------
    >>> check_quantiles((0.01, 0.99))
    (0.01, 0.99)
    """
    try:
        low, high = (float(q) for q in quantiles)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise StreamnormError(
            f"quantiles must be two numbers (low, high) in [0, 1], e.g. (0.01, 0.99); got {quantiles!r}"
        ) from None
    if not 0.0 <= low < high <= 1.0:
        raise StreamnormError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles!r}")
    return low, high


def quantile_map(stats: Stats, quantiles: tuple[float, float], clip: bool) -> AffineMap:
    """``[q_lo, q_hi] -> [-1, 1]``, clamped to [-1, 1] with ``clip``.

    The quantiles play the part of a range's ends (``q_lo`` maps to -1
    exactly, ``q_hi`` to at most +1 in every dtype); equal quantiles (a
    feature constant between them) get a unit of 1, as ``symmetric`` does.
    """
    low, high = _quantiles(stats, list(quantiles), "quantile",
                           [f"{q:g} quantile" for q in quantiles])
    bounds = [f"[{a}, {b}]" for a, b in zip(low.tolist(), high.tolist())]

    def refuse(bad: np.ndarray, span: np.ndarray) -> None:
        _refuse(stats, bad, "the span between its quantiles overflows float64", "quantiles", bounds,
                "rescale the data before normalizing it")

    amap = _range(low, high, "symmetric", refuse, given=False)
    if not clip:
        return amap
    return AffineMap(amap.center, amap.scale, amap.offset, upper=amap.upper, width=amap.width,
                     clip=RANGE_MODES["symmetric"])


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
