"""Integer moments of one part of a batch: which kernel reads which shape.

A part is an unsigned ``(O, F, I)`` view (see :mod:`streamnorm.layout`); its
result is the per-feature ``(sum, q0, q1, q2, min, max)`` of ``x ^ xor`` that
:class:`~streamnorm.accumulate.StatsAccumulator` adds to its pending sums.

- ``I > 1``: each ``x[o, f]`` is a contiguous plane (``*_planes``);
- ``I == 1`` and 1-4 interleaved 8-bit channels (NHWC images): uint32 words,
  a channel per byte position (:func:`~streamnorm._kernels.u8_words`,
  :func:`~streamnorm._kernels.u8_rgb`); one channel is a single plane;
- otherwise rows of columns (``*_cols``), ``k`` rows side by side so that
  the vectorized column loop is long enough.

Every path is exact: the same integers whatever the path or the split.
"""

from __future__ import annotations

import sys

import numpy as np

from . import _kernels as K
from .stats import HISTOGRAM_BINS

__all__ = ["int_moments", "hist_counts", "grouping", "TARGET_LANES", "HIST_LANES"]

# Column layouts with few features are reduced as rows of about this many
# lanes (k rows side by side), so the vectorized inner loop is long enough.
TARGET_LANES = {1: 384, 2: 64, 4: 128, 8: 64}

_KERNELS = {
    1: (K.u8_planes, K.u8_cols),
    2: (K.u16_planes, K.u16_cols),
    4: (K.u32_planes, K.u32_cols),
}
# 8-bit histograms of few features are counted k rows side by side into about
# this many 256-bin lanes: more would leave the L1 cache.
HIST_LANES = 16
# Pixels per group of whole uint32 words, per channel count.
_PIXELS_PER_GROUP = {2: 2, 3: 4, 4: 1}
# The word kernels name byte positions in little-endian order.
_WORDS_OK = sys.byteorder == "little"


def grouping(n_rows: int, n_feat: int, itemsize: int) -> int:
    """Rows reduced side by side in the column kernels (1 = no grouping)."""
    lanes = TARGET_LANES.get(itemsize, 64)
    k = max(1, lanes // max(1, n_feat))
    return k if k > 1 and n_rows >= 4 * k else 1


def _fresh(n_feat: int, umax: int) -> list[np.ndarray]:
    return [*(np.zeros(n_feat, np.int64) for _ in range(4)), np.full(n_feat, umax, np.int64),
            np.zeros(n_feat, np.int64)]


def _merge(out: list[np.ndarray], part: list[np.ndarray]) -> None:
    for a, b in zip(out[:4], part[:4]):
        a += b
    np.minimum(out[4], part[4], out=out[4])
    np.maximum(out[5], part[5], out=out[5])


def _cols(x2: np.ndarray, xor: np.integer, out: list[np.ndarray]) -> None:
    """Rows of columns into ``out``, ``k`` rows side by side where that helps."""
    cols = _KERNELS[x2.dtype.itemsize][1]
    n_rows, n_feat = x2.shape
    k = grouping(n_rows, n_feat, x2.dtype.itemsize)
    main = (n_rows // k) * k if k > 1 else 0
    if main:
        width = k * n_feat
        lanes = _fresh(width, int(np.iinfo(x2.dtype).max))
        cols(x2[:main].reshape(main // k, width), xor, *lanes)
        _merge(out, [lane.reshape(k, n_feat).sum(axis=0) for lane in lanes[:4]]
               + [lanes[4].reshape(k, n_feat).min(axis=0), lanes[5].reshape(k, n_feat).max(axis=0)])
    if main < n_rows:
        cols(x2[main:], xor, *out)


def _pixels(x2: np.ndarray, xor: np.integer, out: list[np.ndarray]) -> None:
    """(P, F) contiguous uint8 pixels of F = 1..4 channels into ``out``."""
    n_rows, n_feat = x2.shape
    if n_feat == 1:
        K.u8_planes(x2.reshape(1, 1, n_rows), xor, *out)
        return
    group = _PIXELS_PER_GROUP[n_feat]
    main = (n_rows // group) * group
    if main:
        words = x2[:main].reshape(-1).view(np.uint32)
        x32 = np.uint32(int(xor) * 0x01010101)
        if n_feat == 3:
            part = _fresh(3, 255)
            K.u8_rgb(words, x32, part[0], part[1], part[4], part[5])
        else:  # byte position b holds channel b % F
            pos = _fresh(4, 255)
            K.u8_words(words, x32, pos[0], pos[1], pos[4], pos[5])
            per = [p.reshape(4 // n_feat, n_feat) for p in pos]
            part = [p.sum(axis=0) for p in per[:4]] + [per[4].min(axis=0), per[5].max(axis=0)]
        _merge(out, part)
    if main < n_rows:
        _cols(x2[main:], xor, out)


def int_moments(x: np.ndarray, xor: np.integer) -> tuple[np.ndarray, ...]:
    """``(sum, q0, q1, q2, min, max)`` per feature of an unsigned ``(O, F, I)`` view ``x ^ xor``.

    Examples
    --------
    >>> x = np.array([[[1, 2]], [[3, 4]]], np.uint8)
    >>> [int(a[0]) for a in int_moments(x, np.uint8(0))]
    [10, 30, 0, 0, 1, 4]
    """
    planes, _ = _KERNELS[x.dtype.itemsize]
    n_outer, n_feat, n_inner = x.shape
    out = _fresh(n_feat, int(np.iinfo(x.dtype).max))
    if n_inner > 1:
        planes(x, xor, *out)
        return tuple(out)
    x2 = x[:, :, 0]
    if x.dtype.itemsize == 1 and n_feat <= 4 and _WORDS_OK and x2.flags.c_contiguous:
        _pixels(x2, xor, out)
    else:
        _cols(x2, xor, out)
    return tuple(out)


def hist_counts(x: np.ndarray, xor: np.integer) -> np.ndarray:
    """``(F, 256)`` counts of the bytes ``x ^ xor`` per feature of a uint8 ``(O, F, I)`` view.

    Examples
    --------
    >>> hist_counts(np.array([[[0, 1, 1]]], np.uint8), np.uint8(0))[0, :3].tolist()
    [1, 2, 0]
    """
    n_rows, n_feat, n_inner = x.shape
    hist = np.zeros((n_feat, HISTOGRAM_BINS), np.int64)
    if n_inner > 1:
        K.u8_hist_planes(x, xor, hist)
        return hist
    x2 = x[:, :, 0]
    k = max(1, HIST_LANES // n_feat)
    main = (n_rows // k) * k if x2.strides == (n_feat, 1) else 0
    if k > 1 and main:
        # k rows side by side count into k histograms per feature: runs of
        # equal values (flat image areas) no longer wait on one counter.
        lanes = np.zeros((k * n_feat, HISTOGRAM_BINS), np.int64)
        K.u8_hist_cols(x2[:main].reshape(main // k, k * n_feat), xor, lanes)
        hist += lanes.reshape(k, n_feat, HISTOGRAM_BINS).sum(axis=0)
    else:
        main = 0
    if main < n_rows:
        K.u8_hist_cols(x2[main:], xor, hist)
    return hist
