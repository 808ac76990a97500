"""``scipy.sparse`` batches: stored values reduced, implicit zeros counted, never densified.

A sparse ``(rows, features)`` batch (layout ``NF``) holds, per column, its
stored values and ``rows - stored`` implicit zeros, which are values like any
other. :func:`update_sparse` reduces the stored values in one sweep over
``data`` (O(nnz), whatever the format: CSR, CSC, COO, the ``*_array`` classes,
and any other scipy format through CSR) and adds the zeros analytically:

- integers: the zeros add nothing to the exact sums, ``rows`` to the count,
  and 0 to min/max where a column has any; the result is bit-identical to the
  dense batch's;
- 8-bit histograms: the zeros go to the bin of 0;
- floats: both passes of a two-pass reduction about the feature's shift run
  over the stored values, and the zeros' ``rows - stored`` copies of
  ``0 - shift`` enter each pass as one product, so the result is as accurate
  as the dense pass.

The batch's partial state is built in a fresh accumulator of the same
settings and merged in with :meth:`StatsAccumulator.merge`, so every rule of
the dense path (dtype promotion, exact merges, shifts) holds unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._batch_input import FLOAT_KIND, classify, native
from ._kernels import _jit
from .errors import DTypeError, LayoutError, MaskError, NonFiniteError

if TYPE_CHECKING:
    from .accumulate import StatsAccumulator

__all__ = ["is_sparse", "update_sparse"]

# Stored values reduced per int64 kernel call: each term of a value's square
# is below 2**32, so 2**20 of them stay below 2**52 (no int64 overflow).
INT_CHUNK = 1 << 20


def is_sparse(batch: Any) -> bool:
    """Whether ``batch`` is a ``scipy.sparse`` matrix or array (scipy imported only if so).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> is_sparse(sp.csr_array(np.eye(2))), is_sparse(np.eye(2))
    (True, False)
    """
    if not type(batch).__module__.startswith("scipy.sparse"):
        return False
    import scipy.sparse

    return bool(scipy.sparse.issparse(batch))


def coordinates(batch: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(data, column of each value, rows, columns)`` of a sparse batch, duplicates summed.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> data, cols, rows, n = coordinates(sp.csc_matrix(np.array([[0, 2], [3, 0]])))
    >>> data.tolist(), cols.tolist(), rows, n
    ([3, 2], [0, 1], 2, 2)
    """
    fmt = batch.format
    if fmt not in ("csr", "csc", "coo"):
        batch, fmt = batch.tocsr(), "csr"
    if not batch.has_canonical_format:
        # duplicate entries add up (as toarray() does); the copy leaves the caller's batch alone
        batch = batch.copy()
        batch.sum_duplicates()
    rows, n_cols = (int(s) for s in batch.shape)
    if fmt == "csr":
        return batch.data, batch.indices, rows, n_cols  # the kernels read int32 indices as they are
    if fmt == "csc":
        cols = np.repeat(np.arange(n_cols, dtype=np.int64), np.diff(batch.indptr))
        return batch.data, cols, rows, n_cols
    col = batch.coords[1] if hasattr(batch, "coords") else batch.col
    return batch.data, np.asarray(col), rows, n_cols


@_jit
def _int_sums(values, cols, n_feat, s, qh, qm, ql, nnz, lo, hi):  # pragma: no cover - numba
    """Exact int64 pieces of sum(v) and sum(v*v) per column: |v| = h*2**16 + l."""
    for k in range(values.shape[0]):
        v = values[k]
        c = cols[k]
        a = v if v >= 0 else -v
        h = a >> 16
        lo16 = a & 0xFFFF
        s[c] += v
        qh[c] += h * h
        qm[c] += h * lo16
        ql[c] += lo16 * lo16
        nnz[c] += 1
        if v < lo[c]:
            lo[c] = v
        if v > hi[c]:
            hi[c] = v


@_jit
def _hist(values, cols, offset, hist, nnz):  # pragma: no cover - numba
    for k in range(values.shape[0]):
        c = cols[k]
        hist[c, values[k] - offset] += 1
        nnz[c] += 1


@_jit
def _first_finite(values, cols, first, has, stored):  # pragma: no cover - numba
    """Each column's first finite stored value (in storage order) and its stored values."""
    for k in range(values.shape[0]):
        x = values[k]
        c = cols[k]
        stored[c] += 1
        if has[c] == 0 and np.isfinite(x):
            first[c] = x
            has[c] = 1


@_jit
def _float_pass1(values, cols, shift, policy, nnz, count, nan, total, lo, hi, has_nan):  # pragma: no cover
    """Per column: stored values, finite ones, non-finite ones, sum about shift, min, max."""
    for k in range(values.shape[0]):
        x = values[k]
        c = cols[k]
        nnz[c] += 1
        if not np.isfinite(x):
            if policy == 0:
                return c
            nan[c] += 1  # counted under "propagate" too, as the dense path does
            if policy == 1:
                continue
            if np.isnan(x):
                has_nan[c] = 1
        count[c] += 1
        total[c] += x - shift[c]
        if x < lo[c]:
            lo[c] = x
        if x > hi[c]:
            hi[c] = x
    return -1


@_jit
def _float_pass2(values, cols, shift, mean, policy, m2):  # pragma: no cover - numba
    for k in range(values.shape[0]):
        x = values[k]
        if policy == 1 and not np.isfinite(x):
            continue
        c = cols[k]
        d = x - shift[c] - mean[c]
        m2[c] += d * d


def update_sparse(acc: StatsAccumulator, batch: Any, mask: Any = None) -> StatsAccumulator:
    """Add a ``scipy.sparse`` batch to ``acc`` (see the module notes); ``acc`` is returned."""
    from . import accumulate as A

    index = acc.n_batches
    if mask is not None or acc._ignore_value is not None:
        raise MaskError(
            f"batch {index} is a scipy.sparse matrix: masks and ignore_value apply to dense batches "
            f"only; pass batch.toarray() in blocks, or leave the implicit zeros in"
        )
    if acc.histogram and np.dtype(batch.dtype).itemsize != 1:
        raise DTypeError(
            f"batch {index} is a scipy.sparse {np.dtype(batch.dtype)} matrix: histogram=True on sparse "
            f"batches takes 8-bit data; pass dense blocks (batch[i:j].toarray()) or drop histogram=True"
        )
    layout = acc._layout
    if len(layout.text) != 2 or layout.feature_axis != 1:
        raise LayoutError(
            f"batch {index} is a scipy.sparse {batch.format} matrix of shape {batch.shape}, whose "
            f"columns are features: use layout 'NF' (got {acc.layout!r})"
        )
    data, cols, rows, n_feat = coordinates(batch)
    source = np.dtype(data.dtype)
    if rows == 0 or n_feat == 0:
        return acc.update(np.empty((rows, n_feat), source))
    acc._check_features(n_feat, index)
    kind, values = classify(native(np.asarray(data)), index)
    acc._check_dtype(kind, source, index, None)
    part = A.StatsAccumulator(acc.layout, acc._feature_names, acc.histogram, acc.nan_policy)
    part._start(kind, n_feat, A.family(source) if acc.histogram else None)
    a = part._arrays
    if kind == FLOAT_KIND:
        _fill_float(acc, a, values, cols, rows, n_feat, index)
    elif acc.histogram:
        offset = A._bin_offset(acc._promoted(source))
        nnz = np.zeros(n_feat, np.int64)
        for start in range(0, values.shape[0], INT_CHUNK):  # int64 copies of one chunk at a time
            stop = start + INT_CHUNK
            _hist(values[start:stop].astype(np.int64), cols[start:stop], offset, a["hist"], nnz)
        a["hist"][:, -offset] += rows - nnz
        a["count"][:] = rows
    else:
        _fill_int(a, values, cols, rows, n_feat)
    part._dtype = source
    part._bfloat16 = False
    part._n_batches = 1
    return acc.merge(part)


def _fill_int(a: dict[str, np.ndarray], values: np.ndarray, cols: np.ndarray, rows: int, n_feat: int) -> None:
    """Exact sums of the stored values; the zeros only add to count and min/max."""
    nnz = np.zeros(n_feat, np.int64)
    lo = np.full(n_feat, np.iinfo(np.int64).max)
    hi = np.full(n_feat, np.iinfo(np.int64).min)
    for start in range(0, values.shape[0], INT_CHUNK):
        s, qh, qm, ql = (np.zeros(n_feat, np.int64) for _ in range(4))
        stop = start + INT_CHUNK
        _int_sums(values[start:stop].astype(np.int64), cols[start:stop], n_feat, s, qh, qm, ql, nnz, lo, hi)
        a["int_sum"] += s.astype(object)
        a["int_sumsq"] += (qh.astype(object) << 32) + (qm.astype(object) << 17) + ql.astype(object)
    zeros = nnz < rows
    a["min"] = np.where(zeros, np.minimum(lo, 0), lo)
    a["max"] = np.where(zeros, np.maximum(hi, 0), hi)
    a["count"][:] = rows


def _fill_float(acc: StatsAccumulator, a: dict[str, np.ndarray], values: np.ndarray, cols: np.ndarray,
                rows: int, n_feat: int, index: int) -> None:
    """Two passes about each feature's shift; the implicit zeros enter each as one product."""
    from . import accumulate as A

    if values.dtype != np.float32:  # float32 is read as it is (each value widened in the kernel)
        values = np.asarray(values, dtype=np.float64)
    policy = A.NAN_POLICIES[acc.nan_policy]
    nnz, count, nan, has_nan = (np.zeros(n_feat, np.int64) for _ in range(4))
    total = np.zeros(n_feat)
    lo, hi = np.full(n_feat, np.inf), np.full(n_feat, -np.inf)
    # The shift: the accumulator's own where it has one (no re-basing at the merge), else 0
    # when the column holds zeros, else its first finite stored value (offset data keeps its digits).
    b = acc._arrays
    own = b["has_shift"].astype(bool) if acc._kind == FLOAT_KIND else np.zeros(n_feat, bool)
    first, has_first = np.zeros(n_feat), np.zeros(n_feat, np.uint8)
    stored = np.zeros(n_feat, np.int64)
    _first_finite(values, cols, first, has_first, stored)
    zeros = rows - stored
    shift = np.where((zeros > 0) | (has_first == 0), 0.0, first)
    if own.any():
        shift = np.where(own, b["shift"], shift)
    bad = _float_pass1(values, cols, shift, policy, nnz, count, nan, total, lo, hi, has_nan)
    if bad >= 0:
        raise NonFiniteError(
            f"batch {index}: feature {acc._name(bad)} has a non-finite value (NaN or inf); "
            f"clean the data, or pass nan_policy='omit' to skip such values (they are counted "
            f"in nan_count) or nan_policy='propagate' to let them through"
        )
    n = count + zeros
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = np.where(n > 0, (total + zeros * -shift) / np.maximum(n, 1), 0.0)
        m2 = np.zeros(n_feat)
        _float_pass2(values, cols, shift, mean, policy, m2)
        m2 = m2 + zeros * (-shift - mean) ** 2
    lo = np.where(zeros > 0, np.fmin(lo, 0.0), lo)
    hi = np.where(zeros > 0, np.fmax(hi, 0.0), hi)
    lo = np.where(has_nan > 0, np.nan, lo)
    hi = np.where(has_nan > 0, np.nan, hi)
    mean, m2 = A._nonfinite_moments(mean, m2, lo, hi)
    has_shift = (n > 0).astype(np.uint8) | own.astype(np.uint8)
    a.update(count=n.astype(np.int64), nan_count=nan, mean=mean, m2=m2, min=lo, max=hi,
             shift=shift, has_shift=has_shift)
