"""numba kernels for masked batches: one fused pass that replaces skipped values.

Integer batches: the accumulator reduces a masked batch with the ordinary
kernels of :mod:`streamnorm._kernels` after :func:`neutralize_int` has written
a copy in which every skipped value is 0 (which adds nothing to the exact
sums), gathering per feature what that hides: the number of skipped values and
the extremes of the kept values.

Float batches are reduced in place by the masked twins of the float kernels
(:func:`masked_float_cols`, :func:`masked_float_planes`: the same blocked
two-pass moments and Chan merges, over the kept values only), after
:func:`scan_float` has counted the skipped values and the kept non-finite
ones. Where some kept value is non-finite and ``nan_policy`` lets it through
or skips it, the batch instead takes :func:`neutralize_float` (skipped values
become NaN, reduced by the omit path) and the accumulator settles the kept
non-finite values itself. Inputs are
``(outer, features, inner)`` views of the batch and of its keep array in the
same memory order; ``keep`` is read as uint8 (0 = skip).

No ``fastmath``: the float kernel tests for NaN.
"""

from __future__ import annotations

import numpy as np

from ._kernels import FLOAT_CHUNK_BYTES, PLANE_LANES, _centred_mean, _chan, _corrected_m2, _jit, _merge_range

__all__ = ["first_kept_finite", "masked_float_cols", "masked_float_planes", "neutralize_float",
           "neutralize_int", "scan_float"]


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


# --------------------------------------------------------------------------
# float moments of the kept values (no kept non-finite value: the caller
# settles those first), the masked twins of _kernels.float_cols/float_planes
# --------------------------------------------------------------------------


@_jit
def first_kept_finite(x, keep, k, has):
    """Set ``k[f]`` to the first kept finite value of feature ``f`` where ``has[f]`` is 0."""
    n_outer, n_feat, n_inner = x.shape
    for f in range(n_feat):
        if has[f]:
            continue
        found = False
        for o in range(n_outer):
            for i in range(n_inner):
                y = np.float64(x[o, f, i])
                if keep[o, f, i] and np.isfinite(y):
                    k[f] = y
                    has[f] = 1
                    found = True
                    break
            if found:
                break


@_jit
def masked_float_cols(x, keep, k, n, mean, m2, mn, mx):
    """(R, W) float -> per-column moments of the kept values about ``k[j]``, in row blocks.

    Selects, not branches, so the column loops vectorize; a skipped value
    contributes 0 whatever it holds (NaN included). Partials are running
    state, merged block by block with Chan's update.
    """
    n_rows, width = x.shape
    block = max(8, FLOAT_CHUNK_BYTES // max(1, width * x.itemsize))
    total = np.empty(width)
    cnt = np.empty(width)
    acc = np.empty(width)
    comp = np.empty(width)
    lo = np.empty(width)
    hi = np.empty(width)
    r0 = 0
    while r0 < n_rows:
        r1 = min(n_rows, r0 + block)
        for j in range(width):
            total[j] = 0.0
            cnt[j] = 0.0
            acc[j] = 0.0
            comp[j] = 0.0
            lo[j] = mn[j]
            hi[j] = mx[j]
        for r in range(r0, r1):
            for j in range(width):
                kept = keep[r, j] != 0
                y = np.float64(x[r, j])
                total[j] += (y - k[j]) if kept else 0.0
                cnt[j] += 1.0 if kept else 0.0
                lo[j] = y if (kept and y < lo[j]) else lo[j]
                hi[j] = y if (kept and y > hi[j]) else hi[j]
        for j in range(width):
            total[j] = k[j] + total[j] / cnt[j] if cnt[j] > 0 else k[j]  # the centre of the M2 pass
        for r in range(r0, r1):
            for j in range(width):
                kept = keep[r, j] != 0
                d = np.float64(x[r, j]) - total[j]
                acc[j] += d * d if kept else 0.0
                comp[j] += d if kept else 0.0
        for j in range(width):
            if cnt[j] > 0:
                cm2 = _corrected_m2(acc[j], comp[j], cnt[j])
                cm = _centred_mean(total[j], k[j], comp[j], cnt[j])
                n[j], mean[j], m2[j] = _chan(n[j], mean[j], m2[j], cnt[j], cm, cm2)
                mn[j] = lo[j]
                mx[j] = hi[j]
        r0 = r1


@_jit
def masked_float_planes(x, keep, k, n, mean, m2, mn, mx):
    """(O, F, I) float -> per-feature moments of the kept values about ``k[f]``.

    Each span ``x[o, f, :]`` is reduced as rows of ``PLANE_LANES`` lanes by
    :func:`masked_float_cols` (its tail as one more lane block), then the
    lanes are merged into feature ``f``.
    """
    n_outer, n_feat, n_inner = x.shape
    lanes = PLANE_LANES
    main = (n_inner // lanes) * lanes
    ln = np.empty(lanes)
    lm = np.empty(lanes)
    lm2 = np.empty(lanes)
    llo = np.empty(lanes)
    lhi = np.empty(lanes)
    lk = np.empty(lanes)
    for o in range(n_outer):
        for f in range(n_feat):
            for j in range(lanes):
                ln[j] = 0.0
                lm[j] = 0.0
                lm2[j] = 0.0
                llo[j] = np.inf
                lhi[j] = -np.inf
                lk[j] = k[f]
            if main > 0:
                masked_float_cols(x[o, f, :main].reshape(main // lanes, lanes),
                                  keep[o, f, :main].reshape(main // lanes, lanes),
                                  lk, ln, lm, lm2, llo, lhi)
            if main < n_inner:
                tail = n_inner - main
                masked_float_cols(x[o, f, main:].reshape(1, tail), keep[o, f, main:].reshape(1, tail),
                                  lk[:tail], ln[:tail], lm[:tail], lm2[:tail], llo[:tail], lhi[:tail])
            for j in range(lanes):
                n[f], mean[f], m2[f] = _chan(n[f], mean[f], m2[f], ln[j], lm[j], lm2[j])
                mn[f], mx[f] = _merge_range(mn[f], mx[f], llo[j], lhi[j])


@_jit
def scan_float(x, keep, masked, kept_bad):
    """Per feature: skipped values, and kept non-finite values (which ``nan_policy`` settles)."""
    n_outer, n_feat, n_inner = x.shape
    for o in range(n_outer):
        for f in range(n_feat):
            m = 0
            bad = 0
            for i in range(n_inner):
                kept = keep[o, f, i] != 0
                m += 0 if kept else 1
                bad += 1 if (kept and not np.isfinite(np.float64(x[o, f, i]))) else 0
            masked[f] += m
            kept_bad[f] += bad
