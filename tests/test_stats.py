"""The Stats value: algebra, variance, quantiles, immutability."""

import numpy as np
import pytest

import streamnorm as sn
from streamnorm.errors import IncompatibleStatsError


def _hist_stats(x, layout="NF"):
    return sn.compute_stats(x, layout=layout, histogram=True)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.bool_])
def test_quantiles_match_numpy_linear(dtype, rng):
    lo, hi = (0, 2) if dtype is np.bool_ else (np.iinfo(dtype).min, np.iinfo(dtype).max + 1)
    for n in (1, 2, 3, 10, 257, 1000):
        x = rng.integers(lo, hi, (n, 3)).astype(dtype)
        s = _hist_stats(x)
        qs = [0, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.6, 0.75, 0.9, 0.999, 1]
        expected = np.quantile(x.astype(np.float64), qs, axis=0)
        np.testing.assert_array_equal(s.quantile(qs), expected)
        np.testing.assert_array_equal(s.quantile(0.5), np.median(x.astype(np.float64), axis=0))
        np.testing.assert_array_equal(s.median, expected[5])
        q1, q3 = np.quantile(x.astype(np.float64), [0.25, 0.75], axis=0)
        np.testing.assert_array_equal(s.iqr, q3 - q1)


def test_quantile_errors():
    s = sn.compute_stats(np.zeros((3, 2), np.float32), layout="NF")
    with pytest.raises(sn.StreamnormError, match="histogram=True"):
        s.quantile(0.5)
    h = _hist_stats(np.zeros((3, 2), np.uint8))
    with pytest.raises(sn.StreamnormError, match=r"\[0, 1\]"):
        h.quantile(1.5)


def test_variance_ddof(rng):
    x = rng.standard_normal((50, 4))
    s = sn.compute_stats(x, layout="NF")
    for ddof in (0, 1, 2):
        np.testing.assert_allclose(s.variance(ddof), x.var(axis=0, ddof=ddof), rtol=1e-13)
    np.testing.assert_allclose(s.std, x.std(axis=0), rtol=1e-13)
    one = sn.compute_stats(x[:1], layout="NF")
    assert np.isnan(one.variance(1)).all()
    with pytest.raises(sn.StreamnormError):
        s.variance(-1)


def test_stats_are_immutable(rng):
    s = sn.compute_stats(rng.standard_normal((5, 2)), layout="NF")
    with pytest.raises(ValueError):
        s.mean[0] = 1.0
    with pytest.raises(AttributeError):
        s.layout = "NCHW"


def test_merge_refuses_mismatches(rng):
    a = sn.compute_stats(rng.standard_normal((5, 2)), layout="NF")
    b = sn.compute_stats(rng.standard_normal((5, 3)), layout="NF")
    c = sn.compute_stats(rng.standard_normal((5, 2)), layout="NF", feature_names=["x", "y"])
    d = _hist_stats(np.zeros((5, 2), np.uint8))
    for other in (b, c, d):
        with pytest.raises(IncompatibleStatsError):
            a.merge(other)


def test_merge_of_int_and_float_stats_falls_back_to_chan(rng):
    x = rng.integers(0, 100, (40, 2))
    a = sn.compute_stats(x[:20].astype(np.uint8), layout="NF")
    b = sn.compute_stats(x[20:].astype(np.float32), layout="NF")
    m = a + b
    assert m.dtype == "float32" and m.int_sum is None
    np.testing.assert_allclose(m.mean, x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(m.var, x.var(axis=0), rtol=1e-13)


def test_sum_builtin_and_equality(rng):
    parts = [sn.compute_stats(rng.integers(0, 9, (4, 2), dtype=np.uint8), layout="NF")
             for _ in range(3)]
    total = sum(parts)
    assert total.count.tolist() == [12, 12]
    assert total == parts[0] + parts[1] + parts[2]
    assert total != parts[0]
    assert "Stats(layout='NF'" in repr(total)
