"""histogram=True on floats and wide integers: a log grid fixed in advance.

Every quantile is within relative ``quantile_error`` of a value between numpy's
``lower`` and ``higher`` quantiles; q=0/1 are the exact min/max; merges of the
integer counts are bit-identical whatever the batching, threads or order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import streamnorm as sn

QS = np.array([0.0, 0.001, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0])
ERRORS = [0.4, 0.05, 1e-3, 1e-6, 1e-12]


def assert_within_bound(result: np.ndarray, x: np.ndarray, qs: np.ndarray, error: float) -> None:
    """Some v in [lower, higher] has |result - v| <= error * |v| (numpy's order statistics)."""
    lo = np.quantile(x, qs, axis=0, method="lower")
    hi = np.quantile(x, qs, axis=0, method="higher")
    inside = (result >= lo) & (result <= hi)
    with np.errstate(invalid="ignore", over="ignore"):
        near_lo = np.abs(result - lo) <= error * np.abs(lo)
        near_hi = np.abs(result - hi) <= error * np.abs(hi)
    ok = inside | near_lo | near_hi
    assert ok.all(), (result[~ok], lo[~ok], hi[~ok], qs[np.nonzero(~ok)[0]])


def _check(stats: sn.Stats, x: np.ndarray, error: float) -> None:
    result = stats.quantile(QS)
    assert result.shape == (QS.size, x.shape[1])
    assert_within_bound(result, x.astype(np.float64), QS, error)
    assert np.array_equal(result[0], x.min(axis=0).astype(np.float64))
    assert np.array_equal(result[-1], x.max(axis=0).astype(np.float64))
    assert ((result >= stats.min) & (result <= stats.max)).all()
    assert stats.quantile_error == error


finite = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)


@st.composite
def float_data(draw):
    n = draw(st.integers(1, 120))
    style = draw(st.sampled_from(["any", "offset", "normal", "lognormal", "integers", "tiny"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if style == "any":
        x = draw(hnp.arrays(np.float64, (n, 2), elements=finite))
    elif style == "offset":
        x = 1e6 + rng.normal(size=(n, 2)) * 1e-3
    elif style == "normal":
        x = rng.normal(size=(n, 2))
        x[rng.random((n, 2)) < 0.2] = 0.0
    elif style == "lognormal":
        x = rng.lognormal(0, 5, size=(n, 2)) * rng.choice([-1, 1], size=(n, 2))
    elif style == "integers":
        x = rng.integers(-1000, 1000, (n, 2)).astype(np.float64)
    else:  # subnormals and zeros, both signs
        x = rng.integers(-50, 50, (n, 2)) * 5e-324
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    return x, cuts


@settings(max_examples=80, deadline=None)
@given(float_data(), st.sampled_from(ERRORS))
def test_float_quantiles_within_relative_bound_of_numpy_order_statistics(data, error):
    x, cuts = data
    s = sn.compute_stats(np.split(x, cuts), layout="NF", histogram=True, quantile_error=error)
    _check(s, x, error)
    assert np.array_equal(s.distribution.total(), s.count)


@settings(max_examples=40, deadline=None)
@given(float_data(), st.randoms(use_true_random=False), st.integers(1, 3))
def test_float_distribution_batching_merge_order_threads_bit_identical(data, random, threads):
    x, cuts = data
    whole = sn.compute_stats(x, layout="NF", histogram=True).distribution
    parts = [sn.compute_stats(p, layout="NF", histogram=True, threads=threads) for p in np.split(x, cuts) if len(p)]
    random.shuffle(parts)
    merged = sn.Stats.merge_all(parts)
    assert merged.distribution.equals(whole)
    q = merged.quantile(QS)
    accs = [sn.StatsAccumulator("NF", histogram=True).update(p) for p in np.split(x, cuts) if len(p)]
    random.shuffle(accs)
    total = accs[0]
    for a in accs[1:]:
        total.merge(a)
    restored = sn.StatsAccumulator("NF", histogram=True)
    restored.load_state_dict(total.state_dict())
    assert restored.result().distribution.equals(whole)
    assert np.array_equal(restored.result().quantile(QS), q, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int32, np.uint32, np.int64, np.uint64, "bfloat16"])
def test_every_dtype_gets_a_grid_distribution(dtype, rng):
    x = rng.normal(size=(2000, 3)) * 1000
    if dtype == "bfloat16":
        batch = torch.from_numpy(x).to(torch.bfloat16)
        values = batch.float().numpy()
    else:
        values = (np.abs(x) if np.dtype(dtype).kind == "u" else x).astype(dtype)
        batch = values
    s = sn.compute_stats([batch[:700], batch[700:]], layout="NF", histogram=True)
    _check(s, values, 1e-3)


def test_huge_values_and_both_signs():
    x = np.array([[-1.7e308], [1.7e308], [0.0], [-0.0], [5e-324], [-5e-324], [1.0], [1e300]])
    _check(sn.compute_stats(x, layout="NF", histogram=True), x, 1e-3)


def test_nan_policy_omit_and_propagate():
    x = np.array([[1.0], [np.nan], [np.inf], [2.0], [3.0]])
    omit = sn.compute_stats(x, layout="NF", histogram=True, nan_policy="omit")
    finite_x = x[np.isfinite(x[:, 0])]
    _check(omit, finite_x, 1e-3)
    with_inf = x[~np.isnan(x[:, 0])]
    prop = sn.compute_stats(with_inf, layout="NF", histogram=True, nan_policy="propagate")
    assert prop.quantile(1.0)[0] == np.inf and prop.quantile(0.0)[0] == 1.0
    assert_within_bound(prop.quantile(QS), with_inf, QS, 1e-3)
    nan = sn.compute_stats(x, layout="NF", histogram=True, nan_policy="propagate")
    assert np.isnan(nan.quantile(0.5)).all()  # numpy.quantile gives NaN too


def test_memory_is_bounded_by_occupied_buckets(rng):
    x = rng.normal(size=(200_000, 1))
    d = sn.compute_stats(x, layout="NF", histogram=True, quantile_error=1e-2).distribution
    assert d.keys.size < 4000  # buckets of 2**-6 relative width over the occupied octaves


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan"), "x", True, None])
def test_quantile_error_out_of_range_is_refused(bad):
    with pytest.raises(sn.StreamnormError, match="quantile_error"):
        sn.StatsAccumulator("NF", histogram=True, quantile_error=bad)


def test_quantile_without_histogram_names_histogram_true():
    s = sn.compute_stats(np.ones((3, 2)), layout="NF")
    with pytest.raises(sn.StreamnormError, match="histogram=True"):
        s.quantile(0.5)
    with pytest.raises(sn.StreamnormError, match="histogram=True"):
        _ = s.median


def test_different_grids_do_not_merge():
    a = sn.compute_stats(np.ones((3, 1)), layout="NF", histogram=True, quantile_error=1e-3)
    b = sn.compute_stats(np.ones((3, 1)), layout="NF", histogram=True, quantile_error=1e-6)
    with pytest.raises(sn.StreamnormError, match="grids differ"):
        a.merge(b)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.uint32, (40, 2)), st.sampled_from(ERRORS), st.sampled_from(["propagate", "omit"]))
def test_float32_keys_from_their_own_bits_equal_the_float64_keys(bits, error, policy):
    # every float32 pattern: subnormals, zeros, infinities and NaNs included
    x32 = bits.view(np.float32)
    kwargs = dict(layout="NF", histogram=True, quantile_error=error, nan_policy=policy)
    a = sn.compute_stats(x32, **kwargs).distribution
    b = sn.compute_stats(x32.astype(np.float64), **kwargs).distribution
    assert a.equals(b)
    planes = sn.compute_stats(np.ascontiguousarray(x32.T).reshape(1, 2, 40), layout="NCL", histogram=True,
                              quantile_error=error, nan_policy=policy).distribution
    assert planes.equals(a)


def test_quantiles_between_ends_further_apart_than_the_float64_range():
    x = np.array([[-1.7976931348623157e308], [9.97920155e291], [9.97920155e291]])
    s = sn.compute_stats(x, layout="NF", histogram=True, quantile_error=0.4)
    _check(s, x, 0.4)
    assert np.isfinite(s.quantile(QS)).all()


def test_many_small_batches_checkpoints_and_copies_give_the_same_counts(rng):
    # enough batches that pending batch counts are merged into the state several times
    x = rng.normal(size=(4000, 40)) * 10.0 ** rng.integers(-3, 4, size=(4000, 40))
    whole = sn.compute_stats(x, layout="NF", histogram=True)
    acc = sn.StatsAccumulator("NF", histogram=True)
    for i in range(0, 2002, 7):
        acc.update(x[i:i + 7])
    twin = acc.copy()
    resumed = sn.StatsAccumulator("NF", histogram=True)
    resumed.load_state_dict(acc.state_dict())
    for a in (acc, twin, resumed):
        for i in range(2002, 4000, 7):
            a.update(x[i:i + 7])
        result = a.result()  # (float moments depend on the batching by rounding; counts do not)
        assert result.distribution.equals(whole.distribution)
        assert np.array_equal(result.quantile(QS), whole.quantile(QS))
