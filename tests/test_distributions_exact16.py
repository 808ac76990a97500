"""histogram=True on bool, 8- and 16-bit integers: exact counts, numpy's quantiles bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from streamnorm.errors import DTypeError

QS = [0.0, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.75, 0.9, 0.99, 1.0]


def _cuts(draw, n: int) -> list[int]:
    return sorted(draw(st.lists(st.integers(0, n), max_size=5)))


@st.composite
def int16_data(draw):
    dtype = draw(st.sampled_from([np.uint16, np.int16]))
    info = np.iinfo(dtype)
    lo = draw(st.integers(int(info.min), int(info.max)))
    hi = draw(st.integers(lo, int(info.max)))
    n = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).integers(lo, hi, (n, 3), endpoint=True).astype(dtype)
    return x, _cuts(draw, n)


@settings(max_examples=40, deadline=None)
@given(int16_data())
def test_quantiles_16bit_equal_numpy_linear_bit_for_bit(data):
    x, cuts = data
    s = sn.compute_stats(np.split(x, cuts), layout="NF", histogram=True)
    assert np.array_equal(s.quantile(QS), np.quantile(x, QS, axis=0))
    assert np.array_equal(s.median, np.median(x, axis=0))
    q1, q3 = np.quantile(x, [0.25, 0.75], axis=0)
    assert np.array_equal(s.iqr, q3 - q1)
    assert s.quantile_error == 0.0
    assert s.quantile(0.5).shape == (3,) and s.quantile([0.5]).shape == (1, 3)
    assert np.array_equal(s.distribution.total(), s.count)
    # moments stay exact (from the counts)
    assert list(s.int_sum) == x.astype(np.int64).sum(axis=0).tolist()
    assert s.min.tolist() == x.min(axis=0).tolist() and s.max.tolist() == x.max(axis=0).tolist()


@settings(max_examples=30, deadline=None)
@given(int16_data(), st.randoms(use_true_random=False), st.integers(1, 3))
def test_16bit_batching_merge_order_and_threads_are_bit_identical(data, random, threads):
    x, cuts = data
    whole = sn.compute_stats(x, layout="NF", histogram=True)
    parts = [sn.compute_stats(p, layout="NF", histogram=True, threads=threads) for p in np.split(x, cuts) if len(p)]
    random.shuffle(parts)
    assert sn.Stats.merge_all(parts).equals(whole)
    accs = [sn.StatsAccumulator("NF", histogram=True).update(p) for p in np.split(x, cuts) if len(p)]
    random.shuffle(accs)
    total = accs[0]
    for a in accs[1:]:
        total.merge(a)
    assert total.result().equals(whole)
    restored = sn.StatsAccumulator("NF", histogram=True)
    restored.load_state_dict(total.state_dict())
    assert restored.result().equals(whole)


def test_16bit_planes_layout_and_int16_extremes():
    x = np.array([-32768, 32767, 0, -1, 5, 5], np.int16).reshape(1, 1, 2, 3)
    s = sn.compute_stats([x, x[..., :1]], layout="NCHW", histogram=True)
    flat = np.concatenate([x.ravel(), x[..., :1].ravel()])
    assert np.array_equal(s.quantile(QS), np.quantile(flat, QS)[:, None])


@pytest.mark.parametrize("first, second", [(np.uint8, np.uint16), (np.uint16, np.uint8), (np.bool_, np.int16),
                                           (np.int8, np.int16), (np.uint16, np.int16)])
def test_8_and_16bit_batches_share_exact_counts(first, second, rng):
    a = rng.integers(0, 2 if first is np.bool_ else 100, (50, 2)).astype(first)
    b = rng.integers(0, 2 if second is np.bool_ else 100, (70, 2)).astype(second)
    s = sn.StatsAccumulator("NF", histogram=True).update(a).update(b).result()
    both = np.concatenate([a.astype(np.int64), b.astype(np.int64)])
    assert np.array_equal(s.quantile(QS), np.quantile(both, QS, axis=0))
    merged = sn.StatsAccumulator("NF", histogram=True).update(a)
    merged.merge(sn.StatsAccumulator("NF", histogram=True).update(b))
    assert merged.result().equals(s)


def test_16bit_and_32bit_distributions_do_not_mix():
    acc = sn.StatsAccumulator("NF", histogram=True).update(np.zeros((2, 2), np.uint16))
    with pytest.raises(DTypeError, match="log grid"):
        acc.update(np.zeros((2, 2), np.uint32))
    other = sn.StatsAccumulator("NF", histogram=True).update(np.zeros((2, 2), np.uint32))
    with pytest.raises(sn.StreamnormError, match="log grid"):
        acc.merge(other)


def test_8bit_histogram_is_kept():
    x = np.arange(256, dtype=np.uint8).reshape(-1, 1)
    s = sn.compute_stats(x, layout="NF", histogram=True)
    assert s.histogram.shape == (1, 256) and s.distribution is None and s.quantile_error == 0.0
