"""Float input: float64 accumulation, batching-independent to 1e-13."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from conftest import feature_matrix


def _reference(x: np.ndarray, layout: str):
    rows = feature_matrix(x, layout).astype(np.float64)
    return rows.mean(axis=1), rows.var(axis=1), rows.min(axis=1), rows.max(axis=1)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout,shape", [("NCHW", (6, 3, 17, 9)), ("NHWC", (6, 17, 9, 3)),
                                          ("NF", (500, 64)), ("N", (1000,)), ("NCL", (3, 2, 700))])
def test_float_stats_match_numpy_in_float64(dtype, layout, shape, rng):
    x = (rng.standard_normal(shape) * 5 + 3).astype(dtype)
    s = sn.compute_stats([x[: shape[0] // 3], x[shape[0] // 3 :]], layout=layout)
    mean, var, lo, hi = _reference(x, layout)
    np.testing.assert_allclose(s.mean, mean, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(s.var, var, rtol=1e-12)
    assert s.min.tolist() == lo.tolist() and s.max.tolist() == hi.tolist()
    assert s.dtype == np.dtype(dtype).name
    assert s.int_sum is None


def test_bfloat16_tensors_are_read_as_float32(rng):
    t = torch.from_numpy(rng.standard_normal((40, 4)).astype(np.float32)).to(torch.bfloat16)
    s = sn.compute_stats(t, layout="NF")
    ref = t.float().numpy().astype(np.float64)
    np.testing.assert_allclose(s.mean, ref.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(s.var, ref.var(axis=0), rtol=1e-12)


def test_int64_takes_the_float64_path(rng):
    x = rng.integers(-10**6, 10**6, (100, 3))
    s = sn.compute_stats(x, layout="NF")
    assert s.dtype == "int64" and s.int_sum is None
    np.testing.assert_allclose(s.mean, x.mean(axis=0), rtol=1e-14)


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(1, 400), max_size=8), seed=st.integers(0, 2**16),
       threads=st.sampled_from([1, 2]), offset=st.sampled_from([0.0, 1e6, -3e8]))
def test_float_results_agree_to_1e13_whatever_the_batching(cuts, seed, threads, offset):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((400, 3)) * 0.5 + offset
    one = sn.compute_stats(x, layout="NF")
    edges = sorted({0, 400, *cuts})
    parts = [sn.StatsAccumulator("NF", threads=threads).update(x[a:b])
             for a, b in zip(edges[:-1], edges[1:])]
    rng.shuffle(parts)
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    got = merged.result()
    # relative to the data's scale: a mean near 0 has no relative digits to keep
    scale = np.abs(one.mean) + one.std
    assert np.all(np.abs(got.mean - one.mean) <= 1e-13 * scale)
    np.testing.assert_allclose(got.m2, one.m2, rtol=1e-13)
    assert got.count.tolist() == one.count.tolist()
    assert got.min.tolist() == one.min.tolist() and got.max.tolist() == one.max.tolist()


def test_constant_feature_has_zero_variance(rng):
    x = np.full((1000, 2), 123456.789)
    s = sn.compute_stats([x[:7], x[7:]], layout="NF")
    assert s.m2.tolist() == [0.0, 0.0] and s.mean.tolist() == [123456.789] * 2


class TestNanPolicies:
    def data(self):
        x = np.arange(60, dtype=np.float64).reshape(20, 3)
        x[4, 1] = np.nan
        x[9, 2] = np.inf
        return x

    def test_raise_names_batch_and_feature_and_keeps_state(self):
        x = self.data()
        acc = sn.StatsAccumulator("NF", feature_names=["a", "b", "c"])
        acc.update(x[:4])
        before = acc.result()
        with pytest.raises(sn.StreamnormError, match=r"batch 1: feature 'b' \(index 1\)"):
            acc.update(x[4:])
        assert acc.result().equals(before) and acc.n_batches == 1

    def test_omit_skips_and_counts(self):
        x = self.data()
        s = sn.compute_stats([x[:5], x[5:]], layout="NF", nan_policy="omit")
        assert s.nan_count.tolist() == [0, 1, 1] and s.count.tolist() == [20, 19, 19]
        clean = np.where(np.isfinite(x), x, np.nan)
        np.testing.assert_allclose(s.mean, np.nanmean(clean, axis=0), rtol=1e-14)
        np.testing.assert_allclose(s.var, np.nanvar(clean, axis=0), rtol=1e-13)
        assert s.max.tolist() == np.nanmax(clean, axis=0).tolist()

    def test_propagate_lets_them_through(self):
        x = self.data()
        s = sn.compute_stats(x, layout="NF", nan_policy="propagate")
        assert np.isfinite(s.mean[0]) and np.isnan(s.mean[1]) and not np.isfinite(s.mean[2])
        assert np.isnan(s.min[1]) and s.max[2] == np.inf
        assert s.nan_count.tolist() == [0, 1, 1] and s.count.tolist() == [20, 20, 20]

    @pytest.mark.parametrize("layout", ["NCL", "NF"])
    def test_every_kernel_path_detects_them(self, layout, rng):
        x = rng.standard_normal((8, 3, 200)) if layout == "NCL" else rng.standard_normal((2000, 3))
        x[(5, 2, 133) if layout == "NCL" else (1500, 2)] = np.nan
        with pytest.raises(sn.StreamnormError, match="feature 2"):
            sn.compute_stats(x, layout=layout)
        s = sn.compute_stats(x, layout=layout, nan_policy="omit")
        assert s.nan_count.tolist() == [0, 0, 1]


def test_one_large_nchw_batch_stays_at_the_float64_limit():
    """Found by review: planes merged one by one let m2's rounding grow with N (1e-12 at 1e6)."""
    u = np.random.default_rng(7).integers(0, 256, (200_000, 2, 3, 3), dtype=np.uint8)
    x = u.astype(np.float32) / np.float32(256)  # exact values: the oracle comes from integer sums
    got = sn.compute_stats(x, layout="NCHW")
    exact = sn.compute_stats(u, layout="NCHW")
    for c in range(2):
        n, s, q = int(exact.count[c]), exact.int_sum[c], exact.int_sumsq[c]
        m2 = float(Fraction(n * q - s * s, n) / 65536)
        assert abs(got.m2[c] - m2) <= 2e-15 * m2
        assert got.mean[c] == float(Fraction(s, n) / 256)
