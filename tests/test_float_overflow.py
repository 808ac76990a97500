"""Item 7 of issue 8: float64 data up to the largest finite value, in any batching.

The oracle is exact rational arithmetic: the true mean of finite values is
always finite; the true M2 is inf exactly when it exceeds the largest float64.
"""

import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import streamnorm as sn
from streamnorm.stats import chan_merge

MAX = sys.float_info.max
SUBNORMAL = 5e-324

magnitudes = st.builds(
    lambda sign, mant, exp: sign * min(mant * 10.0**exp, MAX),
    st.sampled_from([-1.0, 1.0]),
    st.floats(1.0, 9.99),
    st.sampled_from([0, 3, 100, 153, 154, 155, 200, 290, 300, 305, 306, 307, 308]),
)
values = st.one_of(magnitudes, st.floats(-MAX, MAX, allow_nan=False, allow_infinity=False))


def _oracle(x: list[float]) -> tuple[float, float]:
    exact = [Fraction(v) for v in x]
    mean = sum(exact) / len(exact)
    m2 = sum((v - mean) ** 2 for v in exact)
    # near the overflow threshold, rounding may go either way
    # (in exact arithmetic: MAX * (1 + 1e-9) as a float is inf, which would exclude every overflow)
    assume(not (Fraction(MAX) * (1 - Fraction(1, 10**9)) < m2 < Fraction(MAX) * (1 + Fraction(1, 10**9))))
    return float(mean), (float(m2) if m2 <= MAX else np.inf)


def _split(x: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    edges = sorted({0, len(x), *[c % (len(x) + 1) for c in cuts]})
    return [x[a:b] for a, b in zip(edges[:-1], edges[1:])]


def _check(stats: sn.Stats, x: list[float], mean: float, m2: float) -> None:
    scale = max(abs(v) for v in x)
    assert stats.nan_count.tolist() == [0]
    assert np.isfinite(stats.mean[0])
    assert abs(stats.mean[0] - mean) <= 1e-13 * scale + 4 * SUBNORMAL  # a few ulps below 2**-1022
    assert np.isfinite(stats.m2[0]) == np.isfinite(m2), (stats.m2[0], m2)
    if np.isfinite(m2):
        assert abs(stats.m2[0] - m2) <= 1e-11 * m2 + 1e-300
    assert stats.min[0] == min(x) and stats.max[0] == max(x)


@settings(max_examples=150, deadline=None)
@given(x=st.lists(values, min_size=1, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=6),
       layout=st.sampled_from(["N", "NF"]), policy=st.sampled_from(["raise", "omit"]))
@example(x=[1.7e308, -1.7e308, 1.0], cuts=[], layout="N", policy="raise")
@example(x=[-1e308, 1.5e308, 1.5e308, 3.0], cuts=[2], layout="NF", policy="omit")
@example(x=[8e153, -8e153], cuts=[], layout="N", policy="raise")
@example(x=[MAX] * 5, cuts=[2], layout="N", policy="raise")  # m2 exactly 0 at the very top
@example(x=[1.7e308, 1.0, -1.7e308, 2.0], cuts=[1, 2], layout="NF", policy="raise")  # shifts far apart
def test_values_up_to_float64_max_give_the_same_pattern_whatever_the_batching(x, cuts, layout, policy):
    mean, m2 = _oracle(x)
    arr = np.array(x, dtype=np.float64)
    arr = arr if layout == "N" else arr.reshape(-1, 1)
    one = sn.compute_stats(arr, layout=layout, nan_policy=policy)
    _check(one, x, mean, m2)
    parts = _split(arr, cuts)
    batched = sn.compute_stats(parts, layout=layout, nan_policy=policy)
    _check(batched, x, mean, m2)
    rows = sn.compute_stats([arr[i : i + 1] for i in range(len(arr))], layout=layout, nan_policy=policy)
    _check(rows, x, mean, m2)
    merged = sn.StatsAccumulator(layout, nan_policy=policy)
    for part in parts:
        merged.merge(sn.StatsAccumulator(layout, nan_policy=policy).update(part))
    _check(merged.result(), x, mean, m2)
    stats_parts = [sn.compute_stats(part, layout=layout, nan_policy=policy) for part in parts]
    _check(sn.Stats.merge_all(stats_parts), x, mean, m2)  # Stats merges: shifts far apart too


@pytest.mark.parametrize("n_planes", [1, 3, 200])
def test_huge_values_in_every_kernel_path(n_planes):
    rng = np.random.default_rng(0)
    x = rng.choice([-1.7e308, 1.6e308, 1e308, -3.0, 1e-300], size=(50, 2, n_planes))
    s = sn.compute_stats(x, layout="NCL")
    exact = [Fraction(v) for v in x[:, 1].ravel()]
    assert s.nan_count.tolist() == [0, 0]
    assert abs(s.mean[1] - float(sum(exact) / len(exact))) <= 1e-13 * 1.7e308
    assert s.m2.tolist() == [np.inf, np.inf]


def test_one_row_batches_keep_a_finite_m2_when_d_squared_overflows():
    x = np.array([8e153, -8e153])  # d = 1.6e154: d*d overflows, d*d/2 = m2 does not
    one = sn.compute_stats(x, layout="N")
    rows = sn.compute_stats([x[:1], x[1:]], layout="N")
    assert np.isfinite(one.m2[0]) and rows.m2[0] == pytest.approx(one.m2[0], rel=1e-15)
    assert rows.m2[0] == pytest.approx(float(2 * Fraction(8e153) ** 2), rel=1e-15)
    halves = sn.compute_stats(x[:1], layout="N") + sn.compute_stats(x[1:], layout="N")
    assert halves.m2[0] == pytest.approx(one.m2[0], rel=1e-15) and halves.mean[0] == 0.0


def test_chan_merge_means_of_opposite_extremes_stay_finite():
    one = np.ones(1)
    n, mean, m2 = chan_merge(one, np.array([-MAX]), np.zeros(1), 3 * one, np.array([MAX]), np.zeros(1))
    assert n.tolist() == [4.0] and mean[0] == pytest.approx(MAX / 2, rel=1e-15)
    assert m2.tolist() == [np.inf]
