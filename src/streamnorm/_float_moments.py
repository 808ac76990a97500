"""Float moments of one part of a batch, safe up to the largest float64.

A part is an ``(O, F, I)`` float view (see :mod:`streamnorm.layout`), with an
optional boolean ``keep`` of the same shape; its result is the per-feature
``(n, nonfinite, mean, m2, min, max, bad)`` about a per-feature ``shift``
that :class:`~streamnorm.accumulate.StatsAccumulator` merges with Chan's
update. ``bad`` is -1, or the first feature that met a non-finite value
under the ``raise`` policy.

- ``I > 1``: contiguous planes (:func:`~streamnorm._kernels.float_planes`);
- ``I == 1``: rows of columns, ``k`` rows side by side for few features
  (:func:`~streamnorm._kernels.float_cols`), lanes folded afterwards.

Overflow guards: while every ``|x - shift| < HUGE``, a kernel's block sums
(at most 2**15 values) stay finite; features beyond are reduced again scaled
by ``2**-SCALE_BITS`` (exact). A feature whose finite range is wider than
the largest float64 is accumulated about shift 0 (:func:`too_wide`), so that
``mean - shift`` stays finite.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _kernels as K
from . import _masked_kernels as MK
from ._int_moments import grouping

__all__ = ["float_moments", "fresh_moments", "too_wide", "HUGE", "SCALE_BITS"]

HUGE = 2.0 ** 1000
SCALE_BITS = 64
_HALF_MAX = float(np.finfo(np.float64).max) * 0.5


def too_wide(lo: np.ndarray, hi: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Features with a nonzero shift whose finite range is wider than the largest float64."""
    if float(hi.max(initial=-np.inf)) * 0.5 - float(lo.min(initial=np.inf)) * 0.5 <= _HALF_MAX:
        return np.zeros(lo.shape, bool)  # (Python floats: a NaN or inf - inf fails quietly)
    with np.errstate(invalid="ignore"):
        return (np.isfinite(lo) & np.isfinite(hi) & (shift != 0)
                & (hi * 0.5 - lo * 0.5 > _HALF_MAX))


def float_moments(part: Any, shift: np.ndarray, policy: int) -> tuple:
    """Moments of one part (an array, or ``(array, keep)``) about ``shift``, safe up to the largest float64.

    Features where some ``|x - shift|`` reaches ``HUGE`` are reduced
    again, scaled by ``2**-SCALE_BITS`` (exact), so that no sum or
    difference overflows unless the true result does; min and max stay
    unscaled.

    Examples
    --------
    >>> x = np.array([[[1.0]], [[2.0]], [[4.0]]])
    >>> n, nonfinite, mean, m2, lo, hi, bad = float_moments(x, np.array([1.0]), 0)
    >>> float(n[0]), round(float(mean[0] + 1.0), 12), round(float(m2[0]), 12), bad
    (3.0, 2.333333333333, 4.666666666667, -1)
    """
    x, keep = part if isinstance(part, tuple) else (part, None)
    out = list(_moments(x, shift, policy, keep))
    lo, hi, bad = out[4], out[5], out[6]
    if bad >= 0 or x.dtype.itemsize < 8 or max(-lo.min(), hi.max(), np.abs(shift).max()) < HUGE / 2:
        return tuple(out)  # no |x - shift| reaches HUGE (a NaN fails the test: look closer)
    with np.errstate(invalid="ignore", over="ignore"):
        huge = (np.isfinite(lo) & np.isfinite(hi)
                & (np.maximum(np.abs(lo - shift), np.abs(hi - shift)) >= HUGE))
    if not huge.any():
        return tuple(out)
    down = 2.0 ** -SCALE_BITS
    scaled = np.ascontiguousarray(x[:, huge, :], dtype=np.float64) * down
    k = shift[huge] * down
    sub_keep = None if keep is None else np.ascontiguousarray(keep[:, huge, :])
    n, nf, mean, m2, slo, shi, _ = _moments(scaled, k, policy, sub_keep)
    mean = np.clip(mean, slo - k, shi - k)  # a rounded mean may not leave [min, max]
    with np.errstate(over="ignore"):
        out[2][huge] = mean * 2.0 ** SCALE_BITS
        out[3][huge] = m2 * 2.0 ** (2 * SCALE_BITS)  # inf only where the true m2 is
    out[0][huge], out[1][huge] = n, nf
    return tuple(out)


def fresh_moments(width: int) -> list[np.ndarray]:
    """Empty ``(n, nonfinite, mean, m2, min, max)`` partials of ``width`` features, as the kernels fill them."""
    return [np.zeros(width), np.zeros(width, np.int64), np.zeros(width), np.zeros(width),
            np.full(width, np.inf), np.full(width, -np.inf)]


def _cols(values: np.ndarray, kept: np.ndarray | None, k: np.ndarray, out: list[np.ndarray], policy: int) -> int:
    if kept is None:
        return K.float_cols(values, k, *out, policy)
    n, _, mean, m2, lo, hi = out  # (no kept value is non-finite here)
    MK.masked_float_cols(values, kept, k, n, mean, m2, lo, hi)
    return -1


def _moments(x: np.ndarray, shift: np.ndarray, policy: int, keep: np.ndarray | None = None) -> tuple:
    """``(n, nonfinite, mean, m2, min, max, bad)`` of ``x``; of its kept values when ``keep`` is given."""
    n_outer, n_feat, n_inner = x.shape
    if n_inner > 1:
        out = fresh_moments(n_feat)
        if keep is None:
            bad = K.float_planes(x, shift, *out, policy)
        else:
            n, _, mean, m2, lo, hi = out
            MK.masked_float_planes(x, keep, shift, n, mean, m2, lo, hi)
            bad = -1
        return (*out, bad)
    x2 = x[:, :, 0]
    keep2 = None if keep is None else keep[:, :, 0]
    k = grouping(n_outer, n_feat, 8)
    main = (n_outer // k) * k if k > 1 else 0
    bad = -1
    if main:
        lanes = fresh_moments(k * n_feat)
        grouped = None if keep2 is None else keep2[:main].reshape(main // k, k * n_feat)
        bad = _cols(x2[:main].reshape(main // k, k * n_feat), grouped, np.tile(shift, k), lanes, policy)
        if bad >= 0:
            return (*[lane[:n_feat] for lane in lanes], bad % n_feat)
        out = list(K.fold_float_lanes(*lanes, n_feat))
    else:
        out = fresh_moments(n_feat)
    if main < n_outer:
        bad = _cols(x2[main:], None if keep2 is None else keep2[main:], shift, out, policy)
    return (*out, bad)
