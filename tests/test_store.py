"""StatsStore: round trips, the on-disk contract, other Parquet readers, merging, splits."""

from __future__ import annotations

import json
import os
import pickle
import uuid
from decimal import Decimal

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import streamnorm as sn
from _store_helpers import multiset_stats, oracle_stats
from streamnorm.errors import IncompatibleStatsError, SplitNameError, StatsFileError
from streamnorm.fsutil import describe_sources, resolve_url
from streamnorm.stats import Stats
from streamnorm.statsfile import FORMAT_VERSION, SCHEMA, stats_from_bytes, stats_to_bytes

INT_DTYPES = ["bool", "uint8", "int8", "int16", "uint16", "int32"]
FLOAT_DTYPES = ["float16", "float32", "float64"]


def memory_root() -> str:
    return f"memory://test-store/{uuid.uuid4().hex}"


@pytest.fixture(params=["local", "file-url", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "stats")
    if request.param == "file-url":
        return f"file://{tmp_path}/stats"
    return memory_root()


def random_data(rng: np.random.Generator, dtype: str, rows: int, nf: int) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, size=(rows, nf)).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=(rows, nf), endpoint=True, dtype=dt)
    return (rng.normal(size=(rows, nf)) * 10 + 3).astype(dt)


# -- round trips ---------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(INT_DTYPES + FLOAT_DTYPES),
    nf=st.integers(1, 40),
    rows=st.integers(1, 50),
    histogram=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    where=st.sampled_from(["local", "memory"]),
)
def test_round_trip_computed_stats(tmp_path_factory, dtype, nf, rows, histogram, seed, where):
    rng = np.random.default_rng(seed)
    x = random_data(rng, dtype, rows, nf)
    histogram = histogram and dtype in ("uint8", "int8")
    if dtype.startswith("float") and rows > 2:
        x[rng.integers(0, rows), rng.integers(0, nf)] = np.nan
    stats = sn.compute_stats([x[: rows // 2], x[rows // 2:]], layout="NF", histogram=histogram,
                             nan_policy="omit")
    root = str(tmp_path_factory.mktemp("rt")) if where == "local" else memory_root()
    store = sn.StatsStore(root)
    store.save(stats, "train")
    loaded = store.load("train")
    assert loaded.equals(stats)
    assert loaded.is_exact == (dtype in INT_DTYPES)
    assert (loaded.histogram is not None) == histogram


def nan_with_payload(payload: int, negative: bool) -> float:
    bits = (0xFFF if negative else 0x7FF) << 52 | 1 << 51 | payload
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


nans = st.builds(nan_with_payload, st.integers(0, 2**51 - 1), st.booleans())


@st.composite
def int_feature(draw, dtype: str, histogram: bool):
    """(value, multiplicity) pairs of one integer feature; counts up to 2**62."""
    if dtype == "bool":
        low, high = 0, 1
    else:
        info = np.iinfo(dtype)
        low, high = int(info.min), int(info.max)
    big = 2**20 if histogram else 2**60
    pairs = draw(st.lists(st.tuples(st.integers(low, high), st.integers(0, big)), max_size=3))
    # keep sum(x**2) within the file's 38 digits
    return [(v, min(k, (10**38 - 1) // (3 * max(v * v, 1)))) for v, k in pairs]


@st.composite
def float_feature(draw, dtype: str):
    """count, nan_count, mean, m2, min, max, shift pair of one float feature that the
    accumulator could have produced: finite, empty, or propagated NaN/inf."""
    width = np.finfo(dtype).bits
    kind = draw(st.sampled_from(["finite", "finite", "empty", "propagate"]))
    nan_count = draw(st.integers(0, 2**62))
    if kind == "empty":
        return dict(count=0, nan_count=nan_count, mean=draw(nans), m2=draw(st.just(0.0) | st.just(-0.0)),
                    min=draw(nans), max=draw(nans))
    count = draw(st.integers(1, 2**62))
    if kind == "propagate":
        lo, hi = sorted(draw(st.lists(st.floats(width=width), min_size=2, max_size=2)))
        lo, hi = (lo, hi) if not (np.isnan(lo) or np.isnan(hi)) else (draw(nans), draw(nans))
        mean = draw(nans | st.sampled_from([np.inf, -np.inf]))
        return dict(count=count, nan_count=max(nan_count, 1), mean=mean, m2=draw(nans),
                    min=lo, max=hi)
    finite = st.floats(allow_nan=False, allow_infinity=False, width=width)
    lo, hi = sorted(draw(st.lists(finite, min_size=2, max_size=2)))
    inside = st.floats(lo, hi) if lo < hi else st.sampled_from([lo, hi])
    mean = draw(inside | st.sampled_from([lo, hi]))
    with np.errstate(over="ignore"):
        bound = float(count * np.square(np.float64(hi) - np.float64(lo)) / 4)
    m2 = draw(st.floats(0.0, min(bound, 1e300)) | st.just(0.0)) if bound > 0 else 0.0
    out = dict(count=count, nan_count=nan_count, mean=mean, m2=m2, min=lo, max=hi)
    shift = draw(st.none() | inside)
    if shift is not None and np.isfinite(mean - shift) and shift + (mean - shift) == mean:
        out.update(shift=shift, shifted_mean=mean - shift)
    return out


@st.composite
def arbitrary_stats(draw):
    """Any consistent Stats the store must keep bit for bit: NaN payloads, -0.0,
    infinities, empty features, exact sums up to 38 digits, shifts, unicode names."""
    nf = draw(st.integers(1, 12))
    integer = draw(st.booleans())
    dtype = draw(st.sampled_from(INT_DTYPES + ["int64", "uint64"] if integer else FLOAT_DTYPES))
    names = draw(st.one_of(
        st.just([str(i) for i in range(nf)]),
        st.lists(st.text(min_size=0, max_size=8), min_size=nf, max_size=nf, unique=True),
    ))
    layout = draw(st.sampled_from(["NF", "NCHW", "NHWC", "N", "NCL"]))
    if integer:
        hist = dtype in ("bool", "uint8", "int8") and draw(st.booleans())
        features = [draw(int_feature(dtype, hist)) for _ in range(nf)]
        nan_count = draw(hnp.arrays(np.int64, nf, elements=st.integers(0, 2**62)))
        return multiset_stats(dtype, features, histogram=hist, nan_count=nan_count, names=names,
                              layout=layout)
    features = [draw(float_feature(dtype)) for _ in range(nf)]
    fields = {k: [f[k] for f in features] for k in ("count", "nan_count", "mean", "m2", "min", "max")}
    if all("shift" in f for f in features):
        fields.update(shift=[f["shift"] for f in features],
                      shifted_mean=[f["shifted_mean"] for f in features])
    return Stats(layout=layout, feature_names=names, dtype=dtype, **fields)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stats=arbitrary_stats())
def test_round_trip_is_bit_exact(stats):
    store = sn.StatsStore(memory_root())
    store.save(stats, "s")
    assert store.load("s").equals(stats)
    assert stats_from_bytes(stats_to_bytes(stats)).equals(stats)


def test_round_trip_on_every_kind_of_root(root):
    x = np.arange(3 * 40, dtype=np.uint8).reshape(40, 3)
    stats = sn.compute_stats([x], layout="NF", histogram=True)
    store = sn.StatsStore(root)
    path = store.save(stats, "train")
    assert path.endswith("/split=train/stats.parquet")
    fs, fs_path = resolve_url(path)
    assert fs.isfile(fs_path)
    assert store.load("train").equals(stats)
    assert sn.load_stats(root, "train").equals(stats)
    assert store.splits() == ["train"]
    assert store.exists("train") and not store.exists("val")
    assert "train" in store and "val" not in store and "../x" not in store


def test_empty_features_and_nan_round_trip(tmp_path):
    x = np.full((5, 2), np.nan, dtype=np.float32)
    x[:, 1] = [1, 2, 3, np.nan, 5]
    stats = sn.compute_stats([x], layout="NF", nan_policy="omit")
    assert stats.count.tolist() == [0, 4] and np.isnan(stats.mean[0])
    sn.save_stats(stats, tmp_path, "val")
    assert sn.load_stats(tmp_path, "val").equals(stats)


def test_save_accepts_pathlike_and_returns_local_path(tmp_path):
    stats = oracle_stats(np.ones((3, 2), dtype=np.uint8))
    path = sn.save_stats(stats, tmp_path / "root", "train")
    assert path == os.path.join(str(tmp_path), "root", "split=train", "stats.parquet")
    assert os.path.isfile(path)
    assert sorted(os.listdir(tmp_path / "root" / "split=train")) == ["stats.parquet"]


def test_exact_sums_beyond_int64_round_trip(tmp_path):
    top, bottom = 2**31 - 1, -(2**31)
    stats = multiset_stats("int32", [[(top, 2**62)], [(bottom, 2**62), (5, 3)], [(-7, 1)]],
                           names=["a", "b", "c"])
    assert stats.int_sum[0] > 2**63 and stats.int_sum[1] < -(2**63)
    assert stats.int_sumsq[1] > 10**37
    store = sn.StatsStore(tmp_path)
    store.save(stats, "wide")
    assert store.load("wide").int_sum == stats.int_sum
    assert store.load("wide").int_sumsq == stats.int_sumsq
    assert store.load("wide").equals(stats)


def test_sum_beyond_38_digits_is_refused_before_writing(tmp_path):
    stats = multiset_stats("uint64", [[(2**64 - 1, 2**63 - 1)]], names=["a"])
    assert stats.int_sum[0] >= 10**38
    with pytest.raises(sn.StreamnormError, match="exact int_sum of feature 'a'.*38"):
        sn.save_stats(stats, tmp_path / "s", "train")
    assert not (tmp_path / "s").exists()


def test_inconsistent_stats_are_refused_before_writing(tmp_path):
    good = oracle_stats(np.arange(6, dtype=np.uint8).reshape(3, 2), histogram=True)
    bad = Stats(layout=good.layout, feature_names=good.feature_names, dtype=good.dtype,
                count=good.count + 1, nan_count=good.nan_count, mean=good.mean, m2=good.m2,
                min=good.min, max=good.max, histogram=good.histogram, int_sum=good.int_sum,
                int_sumsq=good.int_sumsq)
    with pytest.raises(sn.StreamnormError, match="histogram does not sum to count"):
        sn.save_stats(bad, tmp_path / "s", "train")
    with pytest.raises(sn.StreamnormError, match="expected streamnorm.Stats"):
        sn.save_stats({"mean": 1}, tmp_path / "s", "train")
    assert not (tmp_path / "s").exists()


# -- overwrite -----------------------------------------------------------------
def test_overwrite_false_refuses_and_keeps_the_old_file(root):
    store = sn.StatsStore(root)
    first = oracle_stats(np.zeros((2, 2), dtype=np.uint8))
    second = oracle_stats(np.ones((2, 2), dtype=np.uint8))
    store.save(first, "train")
    with pytest.raises(StatsFileError, match="split 'train' already exists.*overwrite=True"):
        store.save(second, "train")
    assert store.load("train").equals(first)
    store.save(second, "train", overwrite=True)
    assert store.load("train").equals(second)


def test_failed_local_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    store = sn.StatsStore(tmp_path)
    old = oracle_stats(np.zeros((2, 2), dtype=np.uint8))
    store.save(old, "train")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StatsFileError, match="could not write split 'train'.*disk full"):
        store.save(oracle_stats(np.ones((2, 2), dtype=np.uint8)), "train", overwrite=True)
    monkeypatch.undo()
    assert store.load("train").equals(old)
    assert os.listdir(tmp_path / "split=train") == ["stats.parquet"]


def test_failed_object_store_write_leaves_old_object():
    store = sn.StatsStore(memory_root())
    old = oracle_stats(np.zeros((2, 2), dtype=np.uint8))
    store.save(old, "train")
    original = store.fs.pipe_file

    def crash(*args, **kwargs):
        raise OSError("connection reset")

    store.fs.pipe_file = crash
    try:
        with pytest.raises(StatsFileError, match="connection reset"):
            store.save(oracle_stats(np.ones((2, 2), dtype=np.uint8)), "train", overwrite=True)
    finally:
        store.fs.pipe_file = original
    assert store.load("train").equals(old)


def test_leftover_temp_file_of_a_crashed_writer_is_ignored(tmp_path):
    import duckdb

    store = sn.StatsStore(tmp_path)
    stats = oracle_stats(np.arange(4, dtype=np.uint8).reshape(2, 2))
    store.save(stats, "train")
    (tmp_path / "split=train" / ".stats.parquet.deadbeef.tmp").write_bytes(b"PAR1 half")
    (tmp_path / "split=val").mkdir()
    (tmp_path / "split=val" / ".stats.parquet.cafe.tmp").write_bytes(b"PAR1 half")
    assert store.splits() == ["train"]
    assert store.load("train").equals(stats)
    n = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/split=*/stats.parquet', "
                   f"hive_partitioning=true)").fetchall()[0][0]
    assert n == 2


# -- split names ---------------------------------------------------------------
BAD_NAMES = ["", ".", "..", "../x", "x/../../y", "a/b", "/abs", "a b", "a\x00b", " train",
             "train ", "train\n", "-x", "_x", ".hidden", "a\\b", "tr\u00e9in", "x" * 201,
             "split=a", "a*", 3, None, b"train", ["train"]]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_split_names_are_refused_before_anything_is_written(tmp_path, name):
    stats = oracle_stats(np.ones((2, 2), dtype=np.uint8))
    for root in (str(tmp_path / "store"), memory_root()):
        store = sn.StatsStore(root)
        with pytest.raises(SplitNameError):
            store.save(stats, name)
        with pytest.raises(SplitNameError):
            sn.save_stats(stats, root, name, overwrite=True)
        with pytest.raises(SplitNameError):
            store.load(name)
        with pytest.raises(SplitNameError):
            store.exists(name)
        with pytest.raises(SplitNameError):
            store.delete(name)
        with pytest.raises(SplitNameError):
            store.merge(["ok", name])
        fs, path = resolve_url(root)
        assert not fs.exists(path) or fs.find(path) == []
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=30, deadline=None)
@given(names=st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True),
                      min_size=1, max_size=6, unique=True))
def test_valid_split_names_round_trip_and_list(names):
    store = sn.StatsStore(memory_root())
    stats = oracle_stats(np.ones((2, 1), dtype=np.uint8))
    for name in names:
        store.save(stats, name)
    assert store.splits() == sorted(names)
    assert all(store.load(name).equals(stats) for name in names)


# -- listing, deleting, metadata -----------------------------------------------
def test_splits_of_missing_root_is_empty(tmp_path):
    assert sn.StatsStore(tmp_path / "nothing").splits() == []
    assert sn.StatsStore(memory_root()).splits() == []


def test_splits_ignore_unrelated_files(tmp_path):
    store = sn.StatsStore(tmp_path)
    stats = oracle_stats(np.ones((2, 1), dtype=np.uint8))
    store.save(stats, "b")
    store.save(stats, "a")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "split=c").mkdir()  # no file: not a split
    (tmp_path / "split=d" / "nested").mkdir(parents=True)
    (tmp_path / "split=d" / "nested" / "stats.parquet").write_bytes(b"x")
    (tmp_path / "other=e").mkdir()
    (tmp_path / "other=e" / "stats.parquet").write_bytes(b"x")
    assert store.splits() == ["a", "b"]


def test_many_small_splits(tmp_path):
    store = sn.StatsStore(tmp_path)
    x = np.arange(300, dtype=np.uint8).reshape(100, 3)
    parts = [oracle_stats(x[i:i + 1]) for i in range(100)]
    for i, part in enumerate(parts):
        store.save(part, f"shard-{i:05d}")
    names = store.splits()
    assert names == [f"shard-{i:05d}" for i in range(100)]
    loaded = store.load_many(names)
    assert all(loaded[n].equals(p) for n, p in zip(names, parts))
    assert store.merge(names).equals(oracle_stats(x))


def test_delete(root):
    store = sn.StatsStore(root)
    stats = oracle_stats(np.ones((2, 1), dtype=np.uint8))
    store.save(stats, "a")
    store.save(stats, "b")
    store.delete("a")
    assert store.splits() == ["b"]
    with pytest.raises(StatsFileError, match="no statistics for split 'a'"):
        store.delete("a")
    store.delete("a", missing_ok=True)
    store.save(stats, "a")  # can be saved again with overwrite=False
    assert store.splits() == ["a", "b"]


def test_metadata_and_source(tmp_path):
    data = tmp_path / "data.npy"
    np.save(data, np.zeros(3))
    source = describe_sources([data])
    assert source[0]["path"] == str(data)
    assert source[0]["size"] == data.stat().st_size
    assert source[0]["mtime"].startswith("20")
    stats = oracle_stats(np.ones((2, 3), dtype=np.uint8), histogram=True)
    store = sn.StatsStore(tmp_path / "store")
    path = store.save(stats, "train", source={"files": source, "engine": "local"})
    meta = store.metadata("train")
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["streamnorm_version"] == sn.__version__
    assert (meta["layout"], meta["dtype"], meta["split"]) == ("NF", "uint8", "train")
    assert meta["n_features"] == 3
    assert meta["source"] == {"files": source, "engine": "local"}
    # the raw key-value metadata, as any Parquet reader sees it
    raw = {k.decode(): v.decode() for k, v in pq.read_schema(path).metadata.items()}
    assert raw["streamnorm.format_version"] == str(FORMAT_VERSION)
    assert json.loads(raw["source"])["engine"] == "local"
    import datetime as dt
    created = dt.datetime.fromisoformat(raw["created_at"].replace("Z", "+00:00"))
    assert created.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 600


def test_source_must_be_json(tmp_path):
    stats = oracle_stats(np.ones((2, 1), dtype=np.uint8))
    with pytest.raises(sn.StreamnormError, match="JSON"):
        sn.save_stats(stats, tmp_path / "s", "train", source={"x": object()})
    with pytest.raises(sn.StreamnormError, match="JSON"):
        sn.save_stats(stats, tmp_path / "s", "train", source={"x": float("nan")})
    assert not (tmp_path / "s").exists()


def test_describe_sources_missing_file(tmp_path):
    with pytest.raises(StatsFileError, match="cannot describe source"):
        describe_sources([tmp_path / "nope.parquet"])


def test_store_pickles_by_root(tmp_path):
    store = sn.StatsStore(tmp_path)
    stats = oracle_stats(np.ones((2, 1), dtype=np.uint8))
    store.save(stats, "a")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.root == store.root and clone.load("a").equals(stats)
    assert repr(clone) == f"StatsStore({str(tmp_path)!r})"


def test_bad_roots():
    with pytest.raises(sn.StreamnormError, match="non-empty path or URL"):
        sn.StatsStore("")
    with pytest.raises(sn.StreamnormError, match="cannot open"):
        sn.StatsStore("nosuchprotocol-xyz://a/b")
    with pytest.raises(sn.StreamnormError, match="storage_options must be a dict"):
        sn.StatsStore("memory://x", storage_options="key=1")


# -- other readers ---------------------------------------------------------------
@pytest.fixture
def three_splits(tmp_path):
    rng = np.random.default_rng(7)
    store = sn.StatsStore(tmp_path)
    expected = {}
    for split in ("train", "val", "test"):
        x = rng.integers(0, 256, size=(50, 2, 2, 3), dtype=np.uint8)
        expected[split] = sn.compute_stats([x], layout="NHWC", histogram=True)
        store.save(expected[split], split)
    return tmp_path, expected


def test_duckdb_reads_the_store(three_splits):
    import duckdb

    root, expected = three_splits
    con = duckdb.connect()
    rows = con.sql(
        f"select split, feature, feature_index, count, nan_count, mean, m2, min, max, "
        f"histogram, int_sum, int_sumsq from read_parquet('{root}/split=*/stats.parquet', "
        f"hive_partitioning=true) order by split, feature_index"
    ).fetchall()
    assert len(rows) == 9
    for split, feature, index, count, nan_count, mean, m2, lo, hi, hist, s, q in rows:
        e = expected[split]
        assert e.feature_names[index] == feature
        assert (count, nan_count) == (e.count[index], e.nan_count[index])
        assert (mean, m2, lo, hi) == (e.mean[index], e.m2[index], e.min[index], e.max[index])
        assert hist == e.histogram[index].tolist()
        assert (s, q) == (Decimal(e.int_sum[index]), Decimal(e.int_sumsq[index]))
    kv = dict(con.sql(
        f"select decode(key), decode(value) from parquet_kv_metadata('{root}/split=val/"
        f"stats.parquet')").fetchall())
    assert kv["split"] == "val" and kv["layout"] == "NHWC" and kv["dtype"] == "uint8"
    assert int(kv["streamnorm.format_version"]) == FORMAT_VERSION


def test_polars_reads_the_store(three_splits):
    import polars as pl

    root, expected = three_splits
    df = pl.read_parquet(f"{root}/split=*/stats.parquet", hive_partitioning=True)
    assert set(df["split"].to_list()) == {"train", "val", "test"}
    for split, e in expected.items():
        part = df.filter(pl.col("split") == split).sort("feature_index")
        assert part["mean"].to_numpy().tobytes() == e.mean.tobytes()
        assert part["m2"].to_numpy().tobytes() == e.m2.tobytes()
        assert part["count"].to_list() == e.count.tolist()
        assert np.array_equal(np.array(part["histogram"].to_list()), e.histogram)
        assert [int(v) for v in part["int_sum"].to_list()] == list(e.int_sum)


def test_pandas_reads_the_store(three_splits):
    import pandas as pd

    root, expected = three_splits
    df = pd.read_parquet(root)  # Hive-partitioned dataset: adds the split column
    assert sorted(df["split"].astype(str).unique()) == ["test", "train", "val"]
    for split, e in expected.items():
        part = df[df["split"].astype(str) == split].sort_values("feature_index")
        np.testing.assert_array_equal(part["mean"].to_numpy(), e.mean)
        np.testing.assert_array_equal(part["max"].to_numpy(), e.max)
        assert [int(v) for v in part["int_sumsq"]] == list(e.int_sumsq)
        assert np.array_equal(np.stack(part["histogram"].to_numpy()), e.histogram)
    one = pd.read_parquet(os.path.join(root, "split=train", "stats.parquet"))
    assert list(one.columns) == SCHEMA.names


def test_float_stats_have_null_histogram_and_sums(tmp_path):
    import duckdb

    stats = sn.compute_stats([np.random.default_rng(0).normal(size=(10, 4))], layout="NF")
    sn.save_stats(stats, tmp_path, "train")
    nulls = duckdb.sql(
        f"select count(*) filter (where histogram is null and int_sum is null and int_sumsq "
        f"is null) from read_parquet('{tmp_path}/split=*/stats.parquet')").fetchall()[0][0]
    assert nulls == 4


# -- merging and cross-validation -------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "bool"])
def test_cv_merge_is_bit_identical_to_one_pass(root, dtype):
    rng = np.random.default_rng(3)
    x = random_data(rng, dtype, 500, 4)
    histogram = dtype == "uint8"
    fold_of = rng.integers(0, 5, size=len(x))
    folds = [f"fold-{k}" for k in range(5)]
    store = sn.StatsStore(root)
    for k, fold in enumerate(folds):
        part = x[fold_of == k]
        store.save(sn.compute_stats([part[:7], part[7:]], layout="NF", histogram=histogram),
                   fold)
    train = store.cross_validation(folds)
    for k, fold in enumerate(folds):
        one_pass = sn.compute_stats([x[fold_of != k]], layout="NF", histogram=histogram)
        merged = store.merge_except(fold, among=folds)
        assert merged.equals(one_pass)
        assert train[fold].equals(one_pass)
        assert merged.equals(oracle_stats(x[fold_of != k], histogram=histogram))
    # every fold together is the whole dataset, in any order
    assert store.merge(folds[::-1]).equals(sn.compute_stats([x], layout="NF",
                                                            histogram=histogram))


def test_cv_merge_floats_matches_numpy(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(loc=1e4, scale=3.0, size=(1000, 3))
    folds = [f"fold-{k}" for k in range(4)]
    store = sn.StatsStore(tmp_path)
    for k, fold in enumerate(folds):
        store.save(sn.compute_stats([x[k::4]], layout="NF"), fold)
    train = store.merge_except(["fold-0", "fold-3"], among=folds)
    rows = np.concatenate([x[1::4], x[2::4]])
    np.testing.assert_allclose(train.mean, rows.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(train.var, rows.var(axis=0), rtol=1e-12)
    assert train.count.tolist() == [500] * 3


def test_merge_errors(tmp_path):
    store = sn.StatsStore(tmp_path)
    store.save(oracle_stats(np.ones((2, 2), dtype=np.uint8)), "a")
    store.save(oracle_stats(np.ones((2, 3), dtype=np.uint8)), "b")
    store.save(oracle_stats(np.ones((2, 2), dtype=np.uint8)), "c")
    with pytest.raises(IncompatibleStatsError, match="cannot merge split 'b'"):
        store.merge(["a", "b"])
    with pytest.raises(sn.StreamnormError, match="list of split names"):
        store.merge("a")
    with pytest.raises(sn.StreamnormError, match="at least one split"):
        store.merge([])
    with pytest.raises(sn.StreamnormError, match=r"more than once"):
        store.merge(["a", "c", "a"])
    with pytest.raises(StatsFileError, match="no statistics for split 'zz'.*'a', 'b', 'c'"):
        store.merge(["a", "zz"])
    with pytest.raises(sn.StreamnormError, match="not among the folds"):
        store.merge_except("test", among=["a", "c"])
    with pytest.raises(sn.StreamnormError, match="every fold is held out"):
        store.merge_except(["a", "c"], among=["a", "c"])
    with pytest.raises(sn.StreamnormError, match="at least two folds"):
        store.cross_validation(["a"])
    assert store.merge(["a"]).equals(store.load("a"))


def test_load_many_keeps_order_and_tolerates_repeats(tmp_path):
    store = sn.StatsStore(tmp_path)
    a = oracle_stats(np.zeros((2, 1), dtype=np.uint8))
    b = oracle_stats(np.ones((2, 1), dtype=np.uint8))
    store.save(a, "a")
    store.save(b, "b")
    loaded = store.load_many(["b", "a", "b"])
    assert list(loaded) == ["b", "a"]
    assert loaded["a"].equals(a) and loaded["b"].equals(b)
    assert store.load_many([]) == {}
