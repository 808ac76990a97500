"""Item 5: statistics that cannot describe a feature are refused, naming it; constants keep scale 1.

A NaN, infinite or negative variance (or a non-finite mean, minimum, maximum,
quantile, or too few values for ``ddof``) used to be taken for a constant
feature and silently given scale 1. Such statistics come from non-finite data
accumulated with ``nan_policy="propagate"``, from overflow or from a damaged
file; only genuinely constant features (variance 0, min == max) keep the
scikit-learn convention.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.preprocessing import MinMaxScaler, StandardScaler

import streamnorm as sn
from streamnorm.errors import StreamnormError

NAN, INF = float("nan"), float("inf")
# (field, bad value, modes it breaks, what the message must say to do)
DAMAGE = [
    ("m2", NAN, ["zscore"], "nan_policy='omit'"),
    ("m2", INF, ["zscore"], "nan_policy='omit'"),
    ("m2", -1.0, ["zscore"], "recompute"),
    ("m2", -1e-300, ["zscore"], "recompute"),
    ("mean", NAN, ["zscore"], "nan_policy='omit'"),
    ("mean", -INF, ["zscore"], "nan_policy='omit'"),
    ("min", NAN, ["minmax", "symmetric"], "nan_policy='omit'"),
    ("min", -INF, ["minmax", "symmetric"], "nan_policy='omit'"),
    ("max", INF, ["minmax", "symmetric"], "nan_policy='omit'"),
    ("max", NAN, ["minmax", "symmetric"], "nan_policy='omit'"),
    ("max", -1e9, ["minmax", "symmetric"], "recompute"),  # below the minimum
]


def healthy_stats(nf: int, rows: int, seed: int) -> sn.Stats:
    x = np.random.default_rng(seed).normal(5.0, 2.0, size=(rows, nf))
    names = [f"feat{i}" for i in range(nf)]
    return sn.compute_stats([x], layout="NF", feature_names=names)


def damaged(stats: sn.Stats, field: str, index: int, value: float) -> sn.Stats:
    values = getattr(stats, field).copy()
    values[index] = value
    return dataclasses.replace(stats, **{field: values})


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 12), st.data())
def test_bad_statistics_are_refused_naming_the_feature(nf, data):
    stats = healthy_stats(nf, data.draw(st.integers(2, 30)), data.draw(st.integers(0, 99)))
    index = data.draw(st.integers(0, nf - 1))
    field, value, modes, todo = data.draw(st.sampled_from(DAMAGE))
    bad = damaged(stats, field, index, value)
    for mode in modes:
        with pytest.raises(StreamnormError) as info:
            sn.Normalizer.from_stats(bad, mode)
        msg = str(info.value)
        assert f"'feat{index}' (index {index}," in msg
        assert todo in msg
        others = [f"'feat{i}' (" for i in range(nf) if i != index]
        assert not any(o in msg for o in others), msg  # only the bad feature is blamed


@pytest.mark.parametrize("mode", ["zscore", "minmax", "symmetric"])
def test_propagated_non_finite_values_are_refused(mode):
    x = np.array([[1.0, 2.0, 5.0], [3.0, np.nan, 6.0], [4.0, 2.0, np.inf]])
    stats = sn.compute_stats([x], layout="NF", nan_policy="propagate",
                             feature_names=["ok", "hole", "blowup"])
    with pytest.raises(StreamnormError, match=r"'hole' \(index 1,.*nan_policy='omit'") as info:
        sn.Normalizer.from_stats(stats, mode)
    assert "'ok'" not in str(info.value)
    # the advice works: omitting the non-finite values gives a usable normalizer
    omitted = sn.compute_stats([x], layout="NF", nan_policy="omit")
    assert np.isfinite(sn.Normalizer.from_stats(omitted, mode).scale64.numpy()).all()


@pytest.mark.parametrize("ddof", [1, 2, 5])
def test_too_few_values_for_ddof_are_refused(ddof):
    x = np.arange(2 * ddof, dtype=np.float64).reshape(-1, 2)  # ddof rows
    stats = sn.compute_stats([x], layout="NF", feature_names=["a", "b"])
    with pytest.raises(StreamnormError, match=rf"'a' \(index 0, count {ddof}\).*ddof={ddof}"):
        sn.Normalizer.from_stats(stats, ddof=ddof)
    more = sn.compute_stats([np.vstack([x, x[:1] + 1])], layout="NF")
    assert np.isfinite(sn.Normalizer.from_stats(more, ddof=ddof).scale64.numpy()).all()


def test_overflowing_range_is_refused():
    x = np.array([[-1e308, 0.0], [1e308, 1.0]])
    stats = sn.compute_stats([x], layout="NF", feature_names=["wide", "unit"])
    with pytest.raises(StreamnormError, match=r"'wide' \(index 0,.*overflows"):
        sn.Normalizer.from_stats(stats, "minmax")
    with pytest.raises(StreamnormError, match="wider than float64"):
        sn.Normalizer.from_range(-1e308, 1e308)


def test_constructor_names_the_bad_feature():
    with pytest.raises(StreamnormError, match=r"scale of feature 'b' \(index 1\) is inf"):
        sn.Normalizer([1.0, np.inf], [0.0, 0.0], layout="NF", feature_names=["a", "b"])
    with pytest.raises(StreamnormError, match=r"shift of feature '0' \(index 0\) is nan"):
        sn.Normalizer([1.0], [np.nan], layout="NF")


@settings(max_examples=40, deadline=None)
@given(st.floats(-1e12, 1e12), st.integers(1, 40), st.sampled_from(["float64", "float32"]))
def test_genuinely_constant_features_keep_scale_one(value, rows, dtype):
    """Variance exactly 0 and min == max: scale 1 as scikit-learn, never an error."""
    x = np.column_stack([np.full(rows, value), np.arange(rows) + value]).astype(dtype)
    stats = sn.compute_stats([x], layout="NF")
    assert stats.m2[0] == 0 and stats.min[0] == stats.max[0]
    xf = x.astype(np.float64)
    z = sn.Normalizer.from_stats(stats, "zscore")
    assert z.scale64.numpy()[0] == 1.0
    np.testing.assert_array_equal(z(x, dtype=np.float64)[:, 0], 0.0)
    np.testing.assert_array_equal(StandardScaler().fit(xf).scale_[0], 1.0)
    for mode, low in (("minmax", 0.0), ("symmetric", -1.0)):
        norm = sn.Normalizer.from_stats(stats, mode)
        np.testing.assert_array_equal(norm(x, dtype=np.float64)[:, 0], low)
        sk = MinMaxScaler((low, 1.0)).fit(xf)
        assert norm.scale64.numpy()[0] == sk.scale_[0]


def test_ddof_must_be_an_integer_not_a_bool():
    stats = sn.compute_stats([np.arange(12, dtype=np.float32).reshape(4, 3)], layout="NF")
    for bad in (True, 1.0, -1):
        with pytest.raises(sn.StreamnormError, match="ddof"):
            sn.Normalizer.from_stats(stats, ddof=bad)


def test_bfloat16_statistics_build_a_normalizer():
    torch = pytest.importorskip("torch")
    x = torch.arange(24, dtype=torch.float32).reshape(8, 3).to(torch.bfloat16)
    stats = sn.compute_stats([x], layout="NF")
    assert stats.dtype == "bfloat16"
    norm = sn.Normalizer.from_stats(stats)
    y = norm(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y.mean(0), torch.zeros(3), atol=1e-6)
