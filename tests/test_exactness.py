"""Integer input: exact against a rational oracle, bit-identical under any batching."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from conftest import INT_DTYPES, exact_oracle, feature_matrix, random_ints

LAYOUTS = {
    "NCHW": (4, 3, 5, 6),
    "NHWC": (4, 5, 6, 3),
    "NF": (50, 7),
    "NCL": (3, 2, 40),
    "NTHWC": (2, 3, 4, 5, 3),
    "CHW": (3, 7, 9),
    "HWC": (7, 9, 3),
    "N": (300,),
}


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_integer_stats_equal_rational_oracle(dtype, layout, rng):
    x = random_ints(rng, dtype, LAYOUTS[layout])
    stats = sn.compute_stats(x, layout=layout)
    oracle = exact_oracle(x, layout)
    assert stats.mean.tolist() == oracle["mean"]
    assert stats.m2.tolist() == oracle["m2"]
    assert list(stats.int_sum) == oracle["sum"]
    assert list(stats.int_sumsq) == oracle["sumsq"]
    rows = feature_matrix(x, layout).astype(np.int64)
    assert stats.min.tolist() == rows.min(axis=1).astype(float).tolist()
    assert stats.max.tolist() == rows.max(axis=1).astype(float).tolist()
    assert stats.count.tolist() == [rows.shape[1]] * rows.shape[0]
    assert stats.dtype == np.dtype(dtype).name


def test_large_uint8_batches_cross_every_chunk_boundary(rng):
    # planes longer than the 32768-value int32 chunk, column runs longer than
    # the 256-row uint16 and 65536-row uint32 flushes of the column kernel
    x = np.full((2, 3, 300, 300), 255, np.uint8)
    s = sn.compute_stats(x, layout="NCHW")
    assert s.int_sumsq == (255 * 255 * 180000,) * 3 and s.m2.tolist() == [0.0] * 3
    y = np.full((70000, 3), 255, np.uint8)
    s = sn.compute_stats(y, layout="NF")
    assert s.int_sum == (255 * 70000,) * 3 and s.int_sumsq == (65025 * 70000,) * 3


def test_wide_types_at_extremes_stay_exact(rng):
    for dtype in (np.uint32, np.int32, np.uint16, np.int16):
        info = np.iinfo(dtype)
        x = np.array([info.min, info.max] * 5000 + [info.max], dtype=dtype).reshape(-1, 1)
        s = sn.compute_stats(x, layout="NF")
        o = exact_oracle(x, "NF")
        assert s.mean.tolist() == o["mean"] and s.m2.tolist() == o["m2"], dtype


def _split(x: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    edges = sorted({0, x.shape[0], *[c % (x.shape[0] + 1) for c in cuts]})
    return [x[a:b] for a, b in zip(edges[:-1], edges[1:])]


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(INT_DTYPES),
    layout=st.sampled_from(["NCHW", "NHWC", "NF"]),
    cuts=st.lists(st.integers(0, 64), max_size=6),
    order_seed=st.integers(0, 2**16),
    threads=st.sampled_from([1, 2]),
    histogram=st.booleans(),
)
def test_integer_results_are_bit_identical_whatever_the_batching(dtype, layout, cuts, order_seed,
                                                                 threads, histogram):
    rng = np.random.default_rng(order_seed)
    shape = {"NCHW": (64, 3, 4, 4), "NHWC": (64, 4, 4, 3), "NF": (64, 5)}[layout]
    x = random_ints(rng, dtype, shape)
    histogram = histogram and np.dtype(dtype).itemsize == 1
    one_pass = sn.compute_stats(x, layout=layout, histogram=histogram)
    parts = []
    for piece in _split(x, cuts):
        acc = sn.StatsAccumulator(layout, histogram=histogram, threads=threads)
        parts.append(acc.update(piece))
    rng.shuffle(parts)
    stats_parts = [p.result() for p in parts]
    assert sum(stats_parts[1:], stats_parts[0]).equals(one_pass)
    merged = parts[0]
    for other in parts[1:]:
        merged.merge(other)
    assert merged.result().equals(one_pass)


def test_threads_split_large_batches_exactly(rng):
    x = rng.integers(0, 256, (64, 3, 64, 64), dtype=np.uint8)  # 2.3 MB: above the threshold
    single = sn.StatsAccumulator("NCHW").update(x).result()
    for threads in (2, 3, 4):
        assert sn.StatsAccumulator("NCHW", threads=threads).update(x).result().equals(single)


def test_torch_tensors_match_numpy(rng):
    x = random_ints(rng, np.int16, (6, 3, 8, 8))
    from_numpy = sn.compute_stats(x, layout="NCHW")
    t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    assert sn.compute_stats(t, layout="NCHW").equals(from_numpy)
    assert sn.compute_stats([torch.from_numpy(x[:2]), torch.from_numpy(x[2:])],
                            layout="NCHW").equals(from_numpy)
