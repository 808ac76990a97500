"""Masks and ignore_value: skipped values leave the statistics as if they were never there."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from streamnorm.distributed import decode_state, encode_state
from streamnorm.errors import NonFiniteError

INT_DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32"]


def _oracle(x: np.ndarray, keep: np.ndarray, histogram: bool = False) -> list[sn.Stats]:
    """Per feature (NF), the statistics of the kept values alone, computed without any mask."""
    return [sn.compute_stats([x[:, f][keep[:, f]]], layout="N", histogram=histogram) for f in range(x.shape[1])]


def _batches(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    bounds = sorted({0, n, *[c % (n + 1) for c in cuts]})
    return list(zip(bounds[:-1], bounds[1:]))


@st.composite
def _int_case(draw):
    dtype = np.dtype(draw(st.sampled_from(INT_DTYPES)))
    n = draw(st.integers(1, 40))
    f = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        x = rng.integers(0, 2, (n, f)).astype(bool)
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, int(info.max) + 1, (n, f), dtype=dtype)
    keep = rng.random((n, f)) < draw(st.sampled_from([0.0, 0.3, 0.9, 1.0]))
    cuts = draw(st.lists(st.integers(0, 1000), max_size=5))
    return x, keep, cuts


@settings(max_examples=60, deadline=None)
@given(_int_case(), st.booleans())
def test_masked_integer_stats_equal_the_kept_values_bit_for_bit_whatever_the_batching(case, histogram):
    x, keep, cuts = case
    histogram = histogram and x.dtype.itemsize == 1
    acc = sn.StatsAccumulator("NF", histogram=histogram)
    for a, b in _batches(len(x), cuts):
        acc.update(x[a:b], mask=keep[a:b])
    s = acc.result()
    one = sn.StatsAccumulator("NF", histogram=histogram).update(x, mask=keep).result()
    assert s.equals(one)
    assert s.masked_count.tolist() == (~keep).sum(axis=0).tolist()
    assert s.nan_count.tolist() == [0] * x.shape[1]
    for f, ref in enumerate(_oracle(x, keep, histogram)):
        assert s.count[f] == ref.count[0]
        assert s.int_sum[f] == ref.int_sum[0] and s.int_sumsq[f] == ref.int_sumsq[0]
        for field in ("mean", "m2", "min", "max"):
            assert np.array_equal(getattr(s, field)[f:f + 1], getattr(ref, field), equal_nan=True), field
        if histogram:
            assert np.array_equal(s.histogram[f], ref.histogram[0])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["float32", "float64", "float16"]),
       st.lists(st.integers(0, 1000), max_size=5), st.sampled_from([0.0, 1000.0]))
def test_masked_float_stats_match_the_fraction_oracle_of_the_kept_values(seed, dtype, cuts, offset):
    rng = np.random.default_rng(seed)
    n, f = int(rng.integers(1, 50)), int(rng.integers(1, 4))
    x = (rng.normal(size=(n, f)) + offset).astype(dtype)
    keep = rng.random((n, f)) < 0.6
    x[~keep & (rng.random((n, f)) < 0.3)] = np.nan  # masked NaNs never raise
    acc = sn.StatsAccumulator("NF")
    for a, b in _batches(n, cuts):
        acc.update(x[a:b], mask=keep[a:b])
    s = acc.result()
    assert s.masked_count.tolist() == (~keep).sum(axis=0).tolist()
    assert s.nan_count.tolist() == [0] * f
    for j in range(f):
        vals = [Fraction(float(v)) for v in x[:, j][keep[:, j]]]
        assert s.count[j] == len(vals)
        if not vals:
            assert np.isnan(s.mean[j])
            continue
        mean = sum(vals) / len(vals)
        m2 = sum((v - mean) ** 2 for v in vals)
        big = max(abs(v) for v in vals)  # one pass in float64: errors relative to the values' size
        assert abs(Fraction(float(s.mean[j])) - mean) <= big * Fraction(1, 10**14)
        tolerance = m2 * Fraction(1, 10**10) + big * big * len(vals) * Fraction(1, 10**14)
        assert abs(Fraction(float(s.m2[j])) - m2) <= tolerance
        assert s.min[j] == min(vals) and s.max[j] == max(vals)


@pytest.mark.parametrize("layout, shape, mask_shape, axis", [
    ("NCHW", (3, 2, 4, 5), (3, 1, 4, 5), 1),
    ("NHWC", (3, 4, 5, 2), (3, 4, 5, 1), 3),
    ("NF", (7, 3), (7, 1), 1),
    ("NF", (7, 3), (3,), 1),
])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_broadcast_masks_skip_the_same_values_in_every_feature(layout, shape, mask_shape, axis, dtype):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 200, shape).astype(dtype)
    mask = rng.random(mask_shape) < 0.5
    s = sn.StatsAccumulator(layout).update(x, mask=mask).result()
    full = np.broadcast_to(mask, shape)
    xs, ks = np.moveaxis(x, axis, -1).reshape(-1, shape[axis]), np.moveaxis(full, axis, -1).reshape(-1, shape[axis])
    for f, ref in enumerate(_oracle(xs, ks)):
        assert s.count[f] == ref.count[0] and s.masked_count[f] == (~ks[:, f]).sum()
        assert np.array_equal([s.mean[f], s.min[f], s.max[f]], [ref.mean[0], ref.min[0], ref.max[0]], equal_nan=True)


def test_channels_last_memory_with_a_mask_reads_each_feature_correctly():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (2, 5, 6, 3), dtype=np.uint8).transpose(0, 3, 1, 2)  # NCHW view of NHWC memory
    mask = rng.random((2, 1, 5, 6)) < 0.5
    s = sn.StatsAccumulator("NCHW", histogram=True).update(x, mask=mask).result()
    ref = sn.StatsAccumulator("NCHW", histogram=True).update(np.ascontiguousarray(x), mask=mask).result()
    assert s.equals(ref)
    assert s.count.tolist() == [int(mask.sum())] * 3


@pytest.mark.parametrize("mask, match", [
    (np.ones((4, 3), bool), r"mask of batch 1 has shape \(4, 3\).*does not broadcast.*\(5, 3\)"),
    (np.ones((5, 3), np.uint8), r"mask of batch 1 has dtype uint8; a mask is bool"),
    (torch.ones(5, 3), r"mask of batch 1 has dtype float32; a mask is bool"),
    ([[1, 0, 1]], r"mask of batch 1 has dtype int64"),
])
def test_bad_masks_raise_a_clear_error_naming_the_batch_and_change_nothing(mask, match):
    acc = sn.StatsAccumulator("NF").update(np.ones((2, 3)))
    before = acc.state_dict()
    with pytest.raises(sn.StreamnormError, match=match):
        acc.update(np.zeros((5, 3)), mask=mask)
    after = acc.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before if k != "n_batches")
    assert acc.n_batches == 1


def test_torch_batches_and_masks():
    x = torch.arange(12, dtype=torch.int16).reshape(4, 3)
    mask = torch.tensor([[True], [False], [True], [True]])
    s = sn.StatsAccumulator("NF").update(x, mask=mask).result()
    assert s.count.tolist() == [3, 3, 3] and s.masked_count.tolist() == [1, 1, 1]
    assert s.mean.tolist() == [(0 + 6 + 9) / 3, (1 + 7 + 10) / 3, (2 + 8 + 11) / 3]


@pytest.mark.parametrize("dtype, value, skipped", [
    ("uint8", 0, 2), ("int16", -9999, 1), ("uint8", -9999, 0), ("uint8", 0.5, 0),
    ("float32", 0.1, 1), ("float64", -3.4028234663852886e38, 1), ("bool", True, 3),
])
def test_ignore_value_skips_the_values_equal_to_it_in_the_batch_dtype(dtype, value, skipped):
    raw = {"uint8": [0, 3, 0, 5], "int16": [-9999, 3, 4, 5], "float32": [0.1, 3, 4, 5],
           "float64": [-3.4028234663852886e38, 1, 2, 3], "bool": [True, True, False, True]}[dtype]
    x = np.array(raw, dtype=dtype).reshape(-1, 1)
    s = sn.StatsAccumulator("NF", ignore_value=value).update(x).result()
    assert s.masked_count.tolist() == [skipped] and s.count.tolist() == [len(raw) - skipped]
    keep = ~np.isin(np.arange(len(raw)), [])
    if skipped:
        keep = x[:, 0] != np.array(value).astype(dtype)
    ref = sn.compute_stats([x[keep]], layout="NF")
    assert np.array_equal(s.mean, ref.mean) and np.array_equal(s.max, ref.max)


@pytest.mark.parametrize("value", [float("nan"), np.float32("nan"), "0", [1]])
def test_ignore_value_nan_or_non_numbers_are_refused(value):
    with pytest.raises(sn.StreamnormError, match="ignore_value"):
        sn.StatsAccumulator("NF", ignore_value=value)


def test_ignore_value_and_mask_and_masked_arrays_combine():
    data = np.array([[1.0, -1.0], [2.0, 5.0], [-1.0, 7.0], [4.0, 8.0]])
    x = np.ma.masked_array(data, mask=[[0, 0], [0, 0], [0, 0], [1, 0]])
    mask = np.array([[True, True], [True, False], [True, True], [True, True]])
    s = sn.StatsAccumulator("NF", ignore_value=-1).update(x, mask=mask).result()
    assert s.count.tolist() == [2, 2] and s.masked_count.tolist() == [2, 2]
    assert s.mean.tolist() == [1.5, 7.5]


def test_kept_non_finite_values_follow_nan_policy_masked_ones_never_count():
    x = np.array([[np.nan, 1.0], [2.0, np.inf], [3.0, 4.0]])
    keep_nan = np.array([[True, True], [True, False], [True, True]])
    with pytest.raises(NonFiniteError, match="batch 0: feature 0"):
        sn.StatsAccumulator("NF").update(x, mask=keep_nan)
    skip_both = np.array([[False, True], [True, False], [True, True]])
    s = sn.StatsAccumulator("NF").update(x, mask=skip_both).result()
    assert s.nan_count.tolist() == [0, 0] and s.mean.tolist() == [2.5, 2.5]
    s = sn.StatsAccumulator("NF", nan_policy="omit").update(x, mask=keep_nan).result()
    assert s.nan_count.tolist() == [1, 0] and s.count.tolist() == [2, 2] and s.masked_count.tolist() == [0, 1]
    plain = sn.StatsAccumulator("NF", nan_policy="propagate").update(x[[0, 2]]).result()
    s = sn.StatsAccumulator("NF", nan_policy="propagate").update(x, mask=np.array([[True], [False], [True]])).result()
    for field in ("count", "nan_count", "mean", "m2", "min", "max"):
        assert np.array_equal(getattr(s, field), getattr(plain, field), equal_nan=True), field
    inf = sn.StatsAccumulator("NF", nan_policy="propagate").update(x[1:], mask=np.array([[False], [True]]))
    inf.update(x[1:], mask=np.array([[True], [False]]))
    r = inf.result()
    assert r.mean.tolist() == [2.5, np.inf] and r.max[1] == np.inf and r.nan_count.tolist() == [0, 1]


def test_threads_give_the_same_masked_result():
    rng = np.random.default_rng(3)
    for dtype in ("uint8", "int32", "float32"):
        x = rng.integers(0, 100, (20000, 4, 8)).astype(dtype)
        mask = rng.random((20000, 1, 8)) < 0.5
        one = sn.StatsAccumulator("NCH").update(x, mask=mask).result()
        many = sn.StatsAccumulator("NCH", threads=4).update(x, mask=mask).result()
        if dtype == "float32":
            assert np.array_equal(one.count, many.count) and np.allclose(one.m2, many.m2, rtol=1e-12)
        else:
            assert one.equals(many)
        assert one.masked_count.tolist() == [int((~mask).sum() * 1)] * 4


@pytest.mark.parametrize("dtype, histogram", [("uint8", True), ("int16", False), ("float64", False)])
def test_masked_count_survives_merge_state_round_trip_and_encoding(dtype, histogram):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 9, (30, 3)).astype(dtype)
    keep = rng.random((30, 3)) < 0.7
    a = sn.StatsAccumulator("NF", histogram=histogram).update(x[:10], mask=keep[:10])
    b = sn.StatsAccumulator("NF", histogram=histogram).update(x[10:], mask=keep[10:])
    whole = sn.StatsAccumulator("NF", histogram=histogram).update(x, mask=keep).result()
    merged = a.copy().merge(b).result()
    assert merged.masked_count.tolist() == (~keep).sum(axis=0).tolist()
    assert np.array_equal(merged.count, whole.count) and np.array_equal(merged.masked_count, whole.masked_count)
    assert sn.Stats.merge_all([a.result(), b.result()]).masked_count.tolist() == merged.masked_count.tolist()
    restored = sn.StatsAccumulator("NF", histogram=histogram)
    restored.load_state_dict(a.state_dict())
    continued = a.copy().update(x[10:], mask=keep[10:]).result()
    assert restored.update(x[10:], mask=keep[10:]).result().equals(continued)
    assert decode_state(encode_state(merged)).equals(merged)
    back = decode_state(encode_state(a), like=sn.StatsAccumulator("NF", histogram=histogram))
    assert back.result().masked_count.tolist() == a.result().masked_count.tolist()


def test_version_1_states_load_with_zero_masked_count():
    acc = sn.StatsAccumulator("NF").update(np.arange(6, dtype=np.int16).reshape(2, 3))
    state = acc.state_dict()
    assert state["version"] == 2
    state["version"] = 1
    del state["masked_count"]
    old = sn.StatsAccumulator("NF")
    old.load_state_dict(state)
    assert old.result().masked_count.tolist() == [0, 0, 0] and old.result().equals(acc.result())


def test_stats_masked_count_defaults_to_zeros_and_is_kept_by_select_concat_and_equals():
    s = sn.Stats(layout="NF", feature_names=("a", "b"), dtype="float64", count=[1, 1], nan_count=[0, 0],
                 mean=[1.0, 2.0], m2=[0.0, 0.0], min=[1.0, 2.0], max=[1.0, 2.0])
    assert s.masked_count.tolist() == [0, 0] and s.masked_count.dtype == np.int64
    t = sn.StatsAccumulator("NF", feature_names=["a", "b"]).update(
        np.array([[1.0, 2.0], [9.0, 9.0]]), mask=np.array([[True], [False]])).result()
    assert t.masked_count.tolist() == [1, 1] and not t.equals(s)
    assert t.select([1]).masked_count.tolist() == [1]
    u = sn.Stats(layout="NF", feature_names=("c",), dtype="float64", count=[1], nan_count=[0],
                 mean=[1.0], m2=[0.0], min=[1.0], max=[1.0])
    assert sn.Stats.concat([t, u], "NF", "float64").masked_count.tolist() == [1, 1, 0]
    assert (t + s).masked_count.tolist() == [1, 1]


def test_an_all_masked_batch_gives_count_zero_and_nan_moments():
    for dtype in ("uint8", "float32"):
        s = sn.StatsAccumulator("NF").update(np.ones((3, 2), dtype), mask=np.zeros((3, 2), bool)).result()
        assert s.count.tolist() == [0, 0] and s.masked_count.tolist() == [3, 3]
        assert np.isnan(s.mean).all() and np.isnan(s.min).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 3])
def test_masked_float_planes_match_the_kept_values_and_nodata_never_becomes_the_shift(dtype, threads):
    rng = np.random.default_rng(9)
    x = (rng.normal(size=(40, 3, 37, 41)) * 1e-3 + 1e6).astype(dtype)  # offset data: needs a good shift
    mask = rng.random((40, 1, 37, 41)) < 0.7
    x[np.broadcast_to(~mask, x.shape)] = -3.4e38  # nodata far from the data, at the start too
    x[0, :, 0, 0] = -3.4e38
    mask[0, 0, 0, 0] = False
    s = sn.StatsAccumulator("NCHW", threads=threads).update(x, mask=mask).result()
    full = np.broadcast_to(mask, x.shape)
    for c in range(3):
        kept = x[:, c][full[:, c]].astype(np.float64)
        vals = [Fraction(float(v)) for v in kept]
        mean = sum(vals) / len(vals)
        m2 = sum((v - mean) ** 2 for v in vals)
        assert s.count[c] == kept.size and s.masked_count[c] == full[:, c].size - kept.size
        assert abs(Fraction(float(s.mean[c])) - mean) <= abs(mean) * Fraction(1, 10**15)
        assert abs(Fraction(float(s.m2[c])) - m2) <= m2 * Fraction(1, 10**9)
        assert s.min[c] == kept.min() and s.max[c] == kept.max()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([np.uint16, np.int16, np.float32]))
def test_masked_values_never_enter_16bit_or_grid_distributions(seed, dtype):
    """Found at merge time: distributions were counted from the neutralized batch (masked values as 0)."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(-300, 300, (40, 3)) if dtype is not np.uint16 else rng.integers(0, 600, (40, 3)))
    x = x.astype(dtype)
    mask = rng.random((40, 3)) < 0.7
    acc = sn.StatsAccumulator("NF", histogram=True)
    acc.update(x[:25], mask=mask[:25]).update(x[25:], mask=mask[25:])
    got = acc.result()
    for f in range(3):
        kept = x[:, f][mask[:, f]]
        assert got.count[f] == kept.size and got.masked_count[f] == 40 - kept.size
        if kept.size:
            want = np.quantile(kept.astype(np.float64), [0.0, 0.5, 1.0])
            q = got.quantile([0.0, 0.5, 1.0])[:, f]
            assert q[0] == want[0] and q[2] == want[2]
            if dtype is not np.float32:
                assert q[1] == want[1]
