"""Item 1 of issue 8: batches of any byte order give the statistics of their values."""

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from offline_helpers import run_cli

DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "float32", "float64", "bool"]
FOREIGN = ">" if sys.byteorder == "little" else "<"


def _values(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 1000 + 50).astype(dt)
    info = np.iinfo(dt)
    lo, hi = max(info.min, -(2**52)), min(info.max, 2**52)
    return rng.integers(lo, hi, shape, endpoint=True, dtype=np.int64).astype(dt)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    order=st.sampled_from([FOREIGN, "=", "<", ">"]),
    layout=st.sampled_from(["NF", "NCHW", "NHWC", "N"]),
    seed=st.integers(0, 2**16),
    histogram=st.booleans(),
)
def test_every_byte_order_gives_the_native_statistics(dtype, order, layout, seed, histogram):
    rng = np.random.default_rng(seed)
    shape = {"NF": (37, 3), "NCHW": (5, 2, 3, 4), "NHWC": (5, 3, 4, 2), "N": (41,)}[layout]
    native = _values(rng, dtype, shape)
    swapped = native.astype(native.dtype.newbyteorder(order))
    assert np.array_equal(swapped, native)  # same values, other bytes
    histogram = histogram and native.dtype.itemsize == 1
    kw = dict(layout=layout, histogram=histogram)
    expected = sn.compute_stats([native[:2], native[2:]], **kw)
    got = sn.compute_stats([swapped[:2], swapped[2:]], **kw)
    assert got.equals(expected), (dtype, order, layout)
    assert got.dtype == np.dtype(dtype).name


def test_big_endian_values_match_numpy():
    x = np.array([[1, -2], [300, 40000], [-32768, 7]], dtype=">i4")
    s = sn.compute_stats(x, layout="NF")
    assert s.min.tolist() == [-32768.0, -2.0] and s.max.tolist() == [300.0, 40000.0]
    assert s.mean.tolist() == x.astype(np.int64).mean(axis=0).tolist()
    f = np.array([[1.5], [2.5], [-4.0]], dtype=">f8")
    assert sn.compute_stats(f, layout="NF").mean.tolist() == [0.0]


def test_cli_stores_a_big_endian_npy_correctly(tmp_path):
    rng = np.random.default_rng(3)
    values = rng.integers(-30000, 30000, (500, 4)).astype(np.int16)
    np.save(tmp_path / "x.npy", values.astype(">i2"))
    root = tmp_path / "store"
    proc = run_cli("compute", str(tmp_path / "x.npy"), "--store", str(root), "--split", "train",
                   "--layout", "NF", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    stored = sn.StatsStore(str(root)).load("train")
    expected = sn.compute_stats(values, layout="NF")
    assert stored.count.tolist() == expected.count.tolist()
    assert stored.mean.tolist() == values.mean(axis=0).tolist() == expected.mean.tolist()
    assert stored.min.tolist() == values.min(axis=0).tolist()
    assert stored.max.tolist() == values.max(axis=0).tolist()
    assert stored.m2.tolist() == expected.m2.tolist()


@pytest.mark.parametrize("dtype", ["<i2", ">i2", ">u4", ">f4", ">f8"])
def test_strided_views_of_foreign_byte_order(dtype):
    x = np.arange(24).reshape(6, 4).astype(dtype)
    s = sn.compute_stats(x[::2], layout="NF")  # strided, foreign order: copied once
    assert s.mean.tolist() == np.arange(24).reshape(6, 4)[::2].mean(axis=0).tolist()
