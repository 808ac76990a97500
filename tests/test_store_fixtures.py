"""The committed golden store still loads, to exactly the values it was written with.

If this fails after a change to the reader, the change broke files that users
already have: keep reading the old format (and add a new fixture with
``tests/fixtures/make_fixtures.py`` when the format version moves on).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import streamnorm as sn

FIXTURES = Path(__file__).resolve().parent / "fixtures"
STORE_V1 = FIXTURES / "store-v1"
sys.path.insert(0, str(FIXTURES))
import make_fixtures  # noqa: E402  (lives beside the fixtures it writes)


def _floats(values):
    return np.array([math.nan if v == "nan" else float.fromhex(v) for v in values])


@pytest.fixture(scope="module")
def expected():
    return json.loads((STORE_V1 / "expected.json").read_text())


def test_fixture_store_lists_its_splits(expected):
    assert sn.StatsStore(STORE_V1).splits() == sorted(expected) == [
        "float32", "int16", "uint8-hist"]


@pytest.mark.parametrize("split", ["uint8-hist", "float32", "int16"])
def test_fixture_loads_to_exact_expected_values(expected, split):
    store = sn.StatsStore(STORE_V1)
    stats = store.load(split)
    e = expected[split]
    assert (stats.layout, stats.dtype, list(stats.feature_names)) == (
        e["layout"], e["dtype"], e["feature_names"])
    assert stats.count.tolist() == e["count"]
    assert stats.nan_count.tolist() == e["nan_count"]
    for field in ("mean", "m2", "min", "max"):
        assert getattr(stats, field).tobytes() == _floats(e[field]).tobytes(), field
    if e["histogram"] is None:
        assert stats.histogram is None
    else:
        assert stats.histogram.tolist() == e["histogram"]
    for field in ("int_sum", "int_sumsq"):
        want = None if e[field] is None else tuple(int(v) for v in e[field])
        assert getattr(stats, field) == want
    meta = store.metadata(split)
    assert meta["format_version"] == 1 and meta["split"] == split
    assert meta["source"] == {"generator": "tests/fixtures/make_fixtures.py"}


def test_fixture_values_match_an_independent_oracle():
    store = sn.StatsStore(STORE_V1)
    # uint8 images, NCHW: exact
    x = make_fixtures.uint8_images().transpose(1, 0, 2, 3).reshape(3, -1).astype(np.int64)
    s = store.load("uint8-hist")
    n = x.shape[1]
    assert s.count.tolist() == [n] * 3
    assert s.int_sum == tuple(int(v) for v in x.sum(axis=1))
    assert s.mean.tolist() == [float(Fraction(int(v), n)) for v in x.sum(axis=1)]
    assert np.array_equal(s.histogram, np.stack([np.bincount(r, minlength=256) for r in x]))
    assert s.median.tolist() == np.median(x, axis=1).tolist()
    # int16 table: exact
    y = make_fixtures.int16_table().astype(np.int64)
    s = store.load("int16")
    assert s.int_sumsq == tuple(int(v) for v in (y * y).sum(axis=0))
    m = len(y)
    assert s.m2.tolist() == [float(Fraction(m * int(q) - int(t) ** 2, m))
                             for t, q in zip(y.sum(axis=0), (y * y).sum(axis=0))]
    np.testing.assert_allclose(s.var, y.var(axis=0), rtol=1e-15)
    # float32 table: NaN omitted, all-NaN feature empty
    z = make_fixtures.float_table().astype(np.float64)
    s = store.load("float32")
    assert s.count.tolist() == [40, 39, 40, 0] and s.nan_count.tolist() == [0, 1, 0, 40]
    np.testing.assert_allclose(s.mean[:3], np.nanmean(z[:, :3], axis=0), rtol=1e-15)
    np.testing.assert_allclose(s.var[:3], np.nanvar(z[:, :3], axis=0), rtol=1e-13)
    assert np.isnan(s.mean[3]) and np.isnan(s.min[3])


def test_fixture_files_are_read_only_inputs(tmp_path):
    # the fixture reads the same from a copy anywhere, e.g. a memory:// store
    copy = tmp_path / "copy"
    shutil.copytree(STORE_V1, copy)
    mem = sn.StatsStore("memory://fixture-copy")
    for split in sn.StatsStore(copy).splits():
        data = (copy / f"split={split}" / "stats.parquet").read_bytes()
        mem.fs.pipe_file(mem._file(split), data)
        assert mem.load(split).equals(sn.StatsStore(STORE_V1).load(split))
