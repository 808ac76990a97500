"""scipy.sparse batches in StatsAccumulator.update: exact vs the dense batches, never densified."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from streamnorm.errors import LayoutError, NonFiniteError

FORMATS = [sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.csr_array, sp.csc_array, sp.coo_array,
           sp.lil_matrix, sp.bsr_array]
INT_DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32]


def _sparse_dense(seed: int, dtype, rows: int, cols: int, density: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is None:
        dense = rng.random((rows, cols)) < 0.5
    else:
        dense = rng.integers(info.min, info.max, (rows, cols), dtype=dtype, endpoint=True)
    keep = rng.random((rows, cols)) < density
    return np.where(keep, dense, np.zeros((), dtype)).astype(dtype)


def _stats(batches, **kw) -> sn.Stats:
    acc = sn.StatsAccumulator("NF", **kw)
    for b in batches:
        acc.update(b)
    return acc.result()


def _assert_identical(a: sn.Stats, b: sn.Stats) -> None:
    assert a.dtype == b.dtype
    for name in ("count", "nan_count", "mean", "m2", "min", "max"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.int_sum == b.int_sum and a.int_sumsq == b.int_sumsq
    if a.histogram is not None or b.histogram is not None:
        np.testing.assert_array_equal(a.histogram, b.histogram)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(INT_DTYPES), fmt=st.sampled_from(FORMATS),
       rows=st.integers(1, 40), cols=st.integers(1, 7), density=st.floats(0, 1), splits=st.integers(1, 4))
def test_item1_sparse_integer_batches_bit_identical_to_dense(seed, dtype, fmt, rows, cols, density, splits):
    dense = _sparse_dense(seed, dtype, rows, cols, density)
    parts = np.array_split(dense, splits)
    _assert_identical(_stats([fmt(p) for p in parts if p.shape[0]]), _stats([dense]))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.uint8, np.int8, np.bool_]),
       fmt=st.sampled_from(FORMATS), rows=st.integers(1, 40), cols=st.integers(1, 5),
       density=st.floats(0, 1))
def test_item1_sparse_8bit_histogram_exact(seed, dtype, fmt, rows, cols, density):
    dense = _sparse_dense(seed, dtype, rows, cols, density)
    sparse_stats = _stats([fmt(dense)], histogram=True)
    _assert_identical(sparse_stats, _stats([dense], histogram=True))
    np.testing.assert_array_equal(sparse_stats.quantile(0.5), np.quantile(dense.astype(float), 0.5, axis=0))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), fmt=st.sampled_from(FORMATS), rows=st.integers(1, 50),
       cols=st.integers(1, 6), density=st.floats(0, 1), offset=st.sampled_from([0.0, 1e6, -3e8]),
       dtype=st.sampled_from([np.float32, np.float64]), splits=st.integers(1, 5))
def test_item1_sparse_float_batches_match_dense(seed, fmt, rows, cols, density, offset, dtype, splits):
    rng = np.random.default_rng(seed)
    values = (offset + rng.standard_normal((rows, cols))).astype(dtype)
    dense = np.where(rng.random((rows, cols)) < density, values, 0).astype(dtype)
    got = _stats([fmt(p) for p in np.array_split(dense, splits) if p.shape[0]])
    want = _stats([dense])
    x = dense.astype(np.float64)
    np.testing.assert_array_equal(got.count, rows)
    np.testing.assert_array_equal(got.min, x.min(axis=0))
    np.testing.assert_array_equal(got.max, x.max(axis=0))
    np.testing.assert_allclose(got.mean, x.mean(axis=0), rtol=1e-13, atol=1e-12 * (1 + abs(offset)))
    scale = (x - x.mean(axis=0)) ** 2
    np.testing.assert_allclose(got.m2, scale.sum(axis=0), rtol=1e-10, atol=1e-9 * (1 + offset**2) * 1e-12)
    np.testing.assert_allclose(got.m2, want.m2, rtol=1e-10, atol=1e-20 + 1e-21 * offset**2)


def test_item1_sparse_offset_data_keeps_its_digits():
    # a column without implicit zeros, |mean| >> std: accumulated about a stored value
    rng = np.random.default_rng(0)
    col = 1e9 + rng.standard_normal(1000)
    dense = np.stack([col, np.where(rng.random(1000) < 0.1, col, 0)], axis=1)
    got = _stats([sp.csr_matrix(p) for p in np.array_split(dense, 100)])
    ref = np.var(dense[:, 0]) * 1000
    assert abs(got.m2[0] - ref) / ref < 1e-9


def test_item1_duplicates_and_explicit_zeros_count_as_toarray():
    m = sp.coo_matrix((np.array([3, 4, 0], np.int16), (np.array([0, 0, 1]), np.array([1, 1, 0]))), shape=(3, 2))
    assert not m.has_canonical_format
    _assert_identical(_stats([m]), _stats([m.toarray()]))
    csr = sp.csr_matrix((np.array([1.5, 2.5]), np.array([0, 0]), np.array([0, 2, 2])), shape=(2, 2))
    got = _stats([csr])
    np.testing.assert_allclose(got.mean, csr.toarray().mean(axis=0))
    assert csr.data.tolist() == [1.5, 2.5]  # the caller's matrix is left as it was


def test_item1_sparse_and_dense_batches_mix_and_merge():
    dense = _sparse_dense(3, np.uint16, 30, 4, 0.2)
    got = _stats([sp.csr_matrix(dense[:10]), dense[10:20], sp.csc_array(dense[20:])])
    _assert_identical(got, _stats([dense]))


@pytest.mark.parametrize("policy", ["raise", "omit", "propagate"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_item1_sparse_nonfinite_values_follow_nan_policy(policy, bad):
    dense = np.array([[0.0, 1.0], [bad, 0.0], [2.0, 0.0], [0.0, np.inf if policy != "raise" else 3]])
    m = sp.csr_matrix(dense)
    if policy == "raise":
        with pytest.raises(NonFiniteError, match="batch 0: feature 0"):
            _stats([m], nan_policy=policy)
        return
    got, want = _stats([m], nan_policy=policy), _stats([dense], nan_policy=policy)
    for name in ("count", "nan_count", "min", "max"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for name in ("mean", "m2"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-15, err_msg=name,
                                   equal_nan=True)


def test_item1_sparse_needs_layout_nf_and_matching_features():
    with pytest.raises(LayoutError, match="layout 'NF'"):
        sn.StatsAccumulator("NCHW").update(sp.csr_matrix(np.eye(3)))
    acc = sn.StatsAccumulator("NF").update(sp.csr_matrix(np.eye(3)))
    with pytest.raises(LayoutError, match="batch 1"):
        acc.update(sp.csr_matrix(np.eye(4)))


def test_item1_sparse_batch_is_not_densified(monkeypatch):
    m = sp.random(50, 8, density=0.1, format="csr", random_state=1, dtype=np.float64)
    for cls in (sp.csr_matrix, sp.coo_matrix, sp.csc_matrix):
        monkeypatch.setattr(cls, "toarray", lambda *a, **k: pytest.fail("densified"))
        monkeypatch.setattr(cls, "todense", lambda *a, **k: pytest.fail("densified"))
    got = _stats([m, m.tocsc(), m.tocoo()])
    assert got.count.tolist() == [150] * 8


def test_sparse_batches_refuse_masks_and_wide_histograms_clearly():
    """Found at merge time: a mask given with a sparse batch was ignored."""
    x = sp.csr_matrix(np.array([[0, 3], [5, 0]], dtype=np.uint16))
    with pytest.raises(sn.MaskError, match="batch 0 is a scipy.sparse matrix"):
        sn.StatsAccumulator("NF").update(x, mask=np.ones((2, 2), bool))
    with pytest.raises(sn.MaskError):
        sn.StatsAccumulator("NF", ignore_value=3).update(x)
    with pytest.raises(sn.DTypeError, match="histogram=True on sparse"):
        sn.StatsAccumulator("NF", histogram=True).update(x)
