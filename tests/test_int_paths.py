"""Every integer path gives the same exact integers (issue 9's kernels).

Planes, rows of columns and the word kernels for 1-4 interleaved 8-bit
channels (``u8_words``, ``u8_rgb``) are checked against Python integers, at
the bounds their narrow accumulators are proven for.
"""

from __future__ import annotations

import numpy as np
import pytest

import streamnorm as sn
from streamnorm import _int_moments
from streamnorm._int_moments import int_moments


def oracle(x: np.ndarray, xor: int) -> list[list[int]]:
    """Per feature: sum, sum of squares, min, max of ``x ^ xor`` of an (O, F, I) view, in Python ints."""
    u = (x.astype(np.int64) ^ xor).transpose(1, 0, 2).reshape(x.shape[1], -1)
    return [[int(sum(int(v) for v in f)) for f in u], [int(sum(int(v) * int(v) for v in f)) for f in u],
            [int(f.min()) for f in u], [int(f.max()) for f in u]]


def got(x: np.ndarray, xor: int) -> list[list[int]]:
    s, q0, q1, q2, lo, hi = int_moments(x, x.dtype.type(xor))
    if x.dtype.itemsize == 4:  # split squares: u**2 = hh*2**32 + hl*2**17 + ll
        q = [(int(a) << 32) + (int(b) << 17) + int(c) for a, b, c in zip(q0, q1, q2)]
    else:
        q = [int(v) for v in q0]
    return [[int(v) for v in s], q, [int(v) for v in lo], [int(v) for v in hi]]


@pytest.mark.parametrize("n_feat", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 7, 12, 13, 1001])
@pytest.mark.parametrize("xor", [0, 0x80])
def test_pixels_and_columns_are_exact(n_feat, rows, xor):
    rng = np.random.default_rng(rows * 10 + n_feat)
    x = rng.integers(0, 256, (rows, n_feat, 1), dtype=np.uint8)
    assert got(x, xor) == oracle(x, xor)


@pytest.mark.parametrize("n_feat", [1, 2, 3, 4])
def test_word_kernels_at_their_overflow_bounds(n_feat):
    # every value 255 (after the xor): the largest sums; 300k pixels cross the
    # 65536-word and 16384-group chunks of the uint32 accumulators
    rows = 300_007
    x = np.full((rows, n_feat, 1), 0x7F, np.uint8)
    assert got(x, 0x80) == [[255 * rows] * n_feat, [255 * 255 * rows] * n_feat, [255] * n_feat, [255] * n_feat]


def test_rgb_byte_positions_are_their_channels():
    # each channel a different constant: a wrong byte position mixes them
    rows = 4 * 5 + 3
    x = np.empty((rows, 3, 1), np.uint8)
    x[:, 0], x[:, 1], x[:, 2] = 10, 20, 30
    x[-1, 2] = 31
    assert got(x, 0) == [[10 * rows, 20 * rows, 30 * (rows - 1) + 31],
                         [100 * rows, 400 * rows, 900 * (rows - 1) + 961], [10, 20, 30], [10, 20, 31]]


@pytest.mark.parametrize("n_feat", [2, 3, 4])
def test_strided_and_unaligned_pixels(n_feat):
    rng = np.random.default_rng(n_feat)
    buf = rng.integers(0, 256, 1 + 4001 * n_feat * 2, dtype=np.uint8)
    unaligned = buf[1 : 1 + 4001 * n_feat].reshape(4001, n_feat, 1)  # words read from an odd address
    strided = buf[1:].reshape(4001, 2 * n_feat)[:, :n_feat].reshape(4001, n_feat, 1)  # not contiguous
    for x in (unaligned, strided):
        assert got(x, 0x80) == oracle(x, 0x80)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("shape", [(1000, 64, 1), (7, 3, 1), (3, 2, 700), (130, 5, 1)])
def test_wider_integers_are_exact(dtype, shape):
    rng = np.random.default_rng(7)
    x = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    xor = 1 << (8 * np.dtype(dtype).itemsize - 1)
    assert got(x, xor) == oracle(x, xor)


def test_big_endian_hosts_read_pixels_as_columns(monkeypatch):
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, (999, 3, 1), dtype=np.uint8)
    want = oracle(x, 0)
    monkeypatch.setattr(_int_moments, "_WORDS_OK", False)
    assert got(x, 0) == want


@pytest.mark.parametrize("layout,shape", [("NHWC", (40, 100, 100, 3)), ("NHWC", (5, 17, 19, 4)),
                                          ("NHWC", (5, 17, 19, 2)), ("NHWC", (4, 31, 33, 1))])
def test_threads_and_batching_do_not_change_pixel_sums(layout, shape):
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, shape).astype(np.int8)
    one = sn.StatsAccumulator(layout)
    one.update(x)
    split = sn.StatsAccumulator(layout, threads=2)
    for part in np.array_split(x, 3):
        split.update(part)
    a, b = one.result(), split.result()
    assert a.int_sum == b.int_sum and a.int_sumsq == b.int_sumsq
    flat = x.reshape(-1, shape[-1]).astype(np.int64)
    assert list(a.int_sum) == flat.sum(axis=0).tolist()
    assert list(a.int_sumsq) == (flat * flat).sum(axis=0).tolist()
    assert a.min.tolist() == flat.min(axis=0).tolist() and a.max.tolist() == flat.max(axis=0).tolist()
