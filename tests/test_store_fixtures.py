"""The committed golden stores (format 1 and 2) still load, to exactly the values they
were written with.

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
STORES = {1: STORE_V1, 2: FIXTURES / "store-v2"}
sys.path.insert(0, str(FIXTURES))
import make_fixtures  # noqa: E402  (lives beside the fixtures it writes)


def _floats(values):
    return np.array([math.nan if v == "nan" else float.fromhex(v) for v in values])


def _expected(version):
    return json.loads((STORES[version] / "expected.json").read_text())


@pytest.mark.parametrize("version, splits", [
    (1, ["float32", "int16", "uint8-hist"]),
    (2, ["float32", "float32-dist", "float64-offset", "int16", "uint16-dist", "uint8-hist", "uint8-masked"]),
])
def test_fixture_store_lists_its_splits(version, splits):
    assert sn.StatsStore(STORES[version]).splits() == sorted(_expected(version)) == splits


@pytest.mark.parametrize("version, split", [
    (1, "uint8-hist"), (1, "float32"), (1, "int16"),
    (2, "uint8-hist"), (2, "float32"), (2, "int16"), (2, "float64-offset"), (2, "uint8-masked"),
    (2, "uint16-dist"), (2, "float32-dist"),
])
def test_fixture_loads_to_exact_expected_values(version, split):
    store = sn.StatsStore(STORES[version])
    stats = store.load(split)
    e = _expected(version)[split]
    assert (stats.layout, stats.dtype, list(stats.feature_names)) == (
        e["layout"], e["dtype"], e["feature_names"])
    assert stats.count.tolist() == e["count"]
    assert stats.nan_count.tolist() == e["nan_count"]
    # format 1 has no masked_count: it loads as zeros
    assert stats.masked_count.tolist() == e.get("masked_count", [0] * stats.n_features)
    for field in ("mean", "m2", "min", "max"):
        assert getattr(stats, field).tobytes() == _floats(e[field]).tobytes(), field
    if version == 1:
        # format 1 kept no shift: the mean is its own shift (0 and NaN when empty)
        finite = np.isfinite(stats.mean)
        e["shift"] = [v if f else "0x0.0p+0" for v, f in zip(e["mean"], finite)]
        e["shifted_mean"] = ["0x0.0p+0" if f else "nan" for f in finite]
    for field in ("shift", "shifted_mean"):
        assert getattr(stats, field).tobytes() == _floats(e[field]).tobytes(), field
    if e["histogram"] is None:
        assert stats.histogram is None
    else:
        assert stats.histogram.tolist() == e["histogram"]
    for field in ("int_sum", "int_sumsq"):
        want = None if e[field] is None else tuple(int(v) for v in e[field])
        assert getattr(stats, field) == want
    if e.get("distribution") is None:
        assert stats.distribution is None
    else:
        d = e["distribution"]
        assert (stats.distribution.kind, stats.distribution.error) == (d["kind"], d["error"])
        for field in ("offsets", "keys", "counts"):
            assert getattr(stats.distribution, field).tolist() == d[field], field
    meta = store.metadata(split)
    assert meta["format_version"] == version and meta["split"] == split
    assert meta["source"] == {"generator": "tests/fixtures/make_fixtures.py"}
    assert (meta["checksum"] is None) == (version == 1)


def test_fixture_v2_offset_split_keeps_a_real_shift():
    stats = sn.StatsStore(STORES[2]).load("float64-offset")
    x = make_fixtures.offset_table()
    assert stats.shift.tolist() == x[0].tolist()
    mean = [sum(Fraction(float(v)) for v in col) / len(col) for col in x.T]
    for f in range(2):
        assert abs(Fraction(float(stats.mean[f])) - mean[f]) <= Fraction(float(
            np.spacing(abs(stats.mean[f]))))


def test_fixture_v2_distributions_match_numpy():
    store = sn.StatsStore(STORES[2])
    wide = make_fixtures.uint16_table()
    qs = [0.0, 0.1, 0.5, 0.9, 1.0]
    assert np.array_equal(store.load("uint16-dist").quantile(qs), np.quantile(wide, qs, axis=0))
    s = store.load("float32-dist")
    x = make_fixtures.float_dist_table().astype(np.float64)
    got = s.quantile(qs)
    for f in range(2):
        col = x[~np.isnan(x[:, f]), f]
        lo, hi = np.quantile(col, qs, method="lower"), np.quantile(col, qs, method="higher")
        assert (((got[:, f] >= lo) & (got[:, f] <= hi)) | (np.abs(got[:, f] - lo) <= 1e-2 * np.abs(lo))
                | (np.abs(got[:, f] - hi) <= 1e-2 * np.abs(hi))).all()
    assert s.quantile_error == 1e-2


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


@pytest.mark.parametrize("version", [1, 2])
def test_fixture_files_are_read_only_inputs(tmp_path, version):
    # the fixture reads the same from a copy anywhere, e.g. a memory:// store
    copy = tmp_path / "copy"
    shutil.copytree(STORES[version], copy)
    mem = sn.StatsStore(f"memory://fixture-copy-v{version}")
    for split in sn.StatsStore(copy).splits():
        data = (copy / f"split={split}" / "stats.parquet").read_bytes()
        mem.fs.pipe_file(mem._file(split), data)
        assert mem.load(split).equals(sn.StatsStore(STORES[version]).load(split))


def test_fixture_v2_masked_split_holds_the_kept_pixels_only():
    stats = sn.StatsStore(STORES[2]).load("uint8-masked")
    images = make_fixtures.uint8_images()
    keep = np.broadcast_to(make_fixtures.padding_mask(), images.shape) & (images != 11)
    for c in range(3):
        kept = images[:, c][keep[:, c]]
        ref = sn.compute_stats([kept], layout="N", histogram=True)
        assert stats.count[c] == kept.size and stats.masked_count[c] == keep[:, c].size - kept.size
        assert stats.histogram[c].tolist() == ref.histogram[0].tolist()
        assert (stats.int_sum[c], stats.int_sumsq[c]) == (ref.int_sum[0], ref.int_sumsq[0])
    assert stats.masked_count.min() > 0
