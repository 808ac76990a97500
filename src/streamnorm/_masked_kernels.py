"""numba kernels for masked batches: one fused pass that replaces skipped values.

The accumulator reduces a masked batch with the ordinary kernels of
:mod:`streamnorm._kernels` after these kernels have written a copy in which
every skipped value is a neutral one (0 for integers, NaN for floats), and
gathered, per feature, what that substitution hides: the number of skipped
values and, for integers, the extremes of the kept values; for floats, the
kept non-finite values (which ``nan_policy`` then settles). Inputs are
``(outer, features, inner)`` views of the batch and of its keep array in the
same memory order; ``keep`` is read as uint8 (0 = skip).

No ``fastmath``: the float kernel tests for NaN.
"""

from __future__ import annotations

import numpy as np

from ._kernels import _jit

__all__ = ["neutralize_int", "neutralize_float"]


@_jit
def neutralize_int(x, keep, out, masked, lo, hi):
    """``out = where(keep, x, 0)``; per feature: skipped count, min and max of the kept values.

    Branch-free (selects, not jumps), so the loops vectorize; a batch with a
    single inner value per feature (tables) runs as rows of features.
    """
    n_outer, n_feat, n_inner = x.shape
    big = np.int64(np.iinfo(np.int64).max)
    small = np.int64(np.iinfo(np.int64).min)
    if n_inner == 1:
        for o in range(n_outer):
            for f in range(n_feat):
                k = keep[o, f, 0] != 0
                v = x[o, f, 0]
                w = np.int64(v)
                out[o, f, 0] = v if k else 0
                lo[f] = min(lo[f], w if k else big)
                hi[f] = max(hi[f], w if k else small)
                masked[f] += 0 if k else 1
        return
    for o in range(n_outer):
        for f in range(n_feat):
            m = 0
            low = lo[f]
            high = hi[f]
            for i in range(n_inner):
                k = keep[o, f, i] != 0
                v = x[o, f, i]
                w = np.int64(v)
                out[o, f, i] = v if k else 0
                low = min(low, w if k else big)
                high = max(high, w if k else small)
                m += 0 if k else 1
            masked[f] += m
            lo[f] = low
            hi[f] = high


@_jit
def neutralize_float(x, keep, out, masked, kept_bad, nan, pos, neg):
    """``out = where(keep, x, NaN)``; per feature: skipped count, kept non-finite count and kinds."""
    n_outer, n_feat, n_inner = x.shape
    for o in range(n_outer):
        for f in range(n_feat):
            m = 0
            bad = 0
            for i in range(n_inner):
                v = x[o, f, i]
                if keep[o, f, i]:
                    out[o, f, i] = v
                    y = np.float64(v)
                    if not np.isfinite(y):
                        bad += 1
                        if np.isnan(y):
                            nan[f] = 1
                        elif y > 0:
                            pos[f] = 1
                        else:
                            neg[f] = 1
                else:
                    out[o, f, i] = np.nan
                    m += 1
            masked[f] += m
            kept_bad[f] += bad
