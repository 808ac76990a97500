"""Item 8 of issue 8: nan_policy="propagate" gives numpy's mean, var, min and max.

Whatever mix of +inf, -inf, NaN and finite values, whatever the batching, and
through ``StatsAccumulator.merge`` and ``Stats`` merges.
"""

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

import streamnorm as sn

values = st.one_of(
    st.sampled_from([np.inf, -np.inf, np.nan]),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)


def _split(x: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    edges = sorted({0, len(x), *[c % (len(x) + 1) for c in cuts]})
    return [x[a:b] for a, b in zip(edges[:-1], edges[1:])]


def _assert_numpy(stats: sn.Stats, x: np.ndarray) -> None:
    with np.errstate(invalid="ignore", over="ignore"):
        expected = {"mean": np.mean(x, axis=0), "var": np.var(x, axis=0),
                    "min": np.min(x, axis=0), "max": np.max(x, axis=0)}
    for name, want in expected.items():
        got = getattr(stats, name)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-6, equal_nan=True, err_msg=name)
    assert stats.count.tolist() == [len(x)] * x.shape[1]
    assert stats.nan_count.tolist() == (~np.isfinite(x)).sum(axis=0).tolist()


@settings(max_examples=150, deadline=None)
@given(cols=st.lists(st.lists(values, min_size=1, max_size=30), min_size=1, max_size=3),
       cuts=st.lists(st.integers(0, 30), max_size=5), dtype=st.sampled_from([np.float64, np.float32]))
@example(cols=[[np.inf, 1.0, 2.0], [-np.inf, 3.0, 4.0], [np.inf, np.inf, 1.0]], cuts=[1], dtype=np.float64)
@example(cols=[[1.0, 2.0, np.inf, 3.0]], cuts=[3], dtype=np.float32)
def test_propagate_matches_numpy_for_every_mix_and_batching(cols, cuts, dtype):
    n = min(len(c) for c in cols)
    x = np.array([c[:n] for c in cols], dtype=dtype).T.copy()
    wide = x.astype(np.float64)
    kw = dict(layout="NF", nan_policy="propagate")
    _assert_numpy(sn.compute_stats(x, **kw), wide)
    parts = _split(x, cuts)
    _assert_numpy(sn.compute_stats(parts, **kw), wide)
    _assert_numpy(sn.compute_stats([x[i : i + 1] for i in range(n)], **kw), wide)
    merged = sn.StatsAccumulator(**kw)
    for part in parts:
        merged.merge(sn.StatsAccumulator(**kw).update(part))
    _assert_numpy(merged.result(), wide)
    stats_parts = [sn.compute_stats(part, **kw) for part in parts]
    _assert_numpy(sn.Stats.merge_all(stats_parts), wide)
    _assert_numpy(sum(stats_parts[1:], stats_parts[0]), wide)


def test_one_sign_of_infinity_gives_that_infinity():
    s = sn.compute_stats(np.array([[1.0, -np.inf], [np.inf, 2.0], [3.0, 4.0]]), layout="NF",
                         nan_policy="propagate")
    assert s.mean.tolist() == [np.inf, -np.inf]
    assert np.isnan(s.var).all() and s.min.tolist() == [1.0, -np.inf] and s.max.tolist() == [np.inf, 4.0]
