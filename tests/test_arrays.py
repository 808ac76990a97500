"""Zarr (v2, v3) and HDF5 sources: written by zarr and h5py, read exactly through every engine."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import h5py
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamnorm as sn
from streamnorm import engine
from streamnorm.cli import main
from streamnorm.errors import LayoutError
from streamnorm.sources import SourceError, open_source
from streamnorm.sources.arrays import declared_nodata

SRC = str(Path(__file__).resolve().parents[1] / "src")
INT_DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "bool"]  # the exact path (DESIGN.md)


def write_zarr(path: Path, arrays: dict[str, np.ndarray], chunk_rows: int, version: int,
               attrs: dict | None = None) -> None:
    """A Zarr store of format ``version`` holding ``arrays`` (paths may name groups)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=version)
    for name, data in arrays.items():
        arr = group.create_array(name, shape=data.shape, dtype=data.dtype,
                                 chunks=(chunk_rows, *data.shape[1:]))
        arr[...] = data
        arr.attrs.update(attrs or {})


def write_h5(path: Path, arrays: dict[str, np.ndarray], chunk_rows: int | None,
             compression: str | None = None, attrs: dict | None = None) -> None:
    """An HDF5 file holding ``arrays``: chunked (and compressed) or contiguous datasets."""
    with h5py.File(path, "w") as f:
        for name, data in arrays.items():
            chunks = None if chunk_rows is None else (min(chunk_rows, data.shape[0]), *data.shape[1:])
            ds = f.create_dataset(name, data=data, chunks=chunks,
                                  compression=compression if chunks else None)
            ds.attrs.update(attrs or {})


def exact_mean(data: np.ndarray) -> list[float]:
    """Per-feature (last axis) mean from Python integers."""
    flat = data.reshape(-1, data.shape[-1])
    return [sum(int(v) for v in flat[:, j]) / len(flat) for j in range(flat.shape[1])]


def write_any(kind: str, tmp: Path, data: np.ndarray, chunk_rows: int, name: str = "g/x") -> Path:
    if kind == "hdf5-contiguous":
        write_h5(tmp / "a.h5", {name: data}, None)
        return tmp / "a.h5"
    if kind == "hdf5":
        write_h5(tmp / "a.hdf5", {name: data}, chunk_rows, compression="gzip")
        return tmp / "a.hdf5"
    write_zarr(tmp / "a.zarr", {name: data}, chunk_rows, version=int(kind[-1]))
    return tmp / "a.zarr"


KINDS = ["zarr2", "zarr3", "hdf5", "hdf5-contiguous"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), dtype=st.sampled_from(INT_DTYPES),
       rows=st.integers(1, 90), features=st.integers(1, 4), chunk=st.integers(1, 20),
       shard_rows=st.integers(1, 40), batch_rows=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_integer_arrays_are_bit_identical_to_the_numpy_oracle_for_any_chunking(
        tmp_path_factory, kind, dtype, rows, features, chunk, shard_rows, batch_rows, seed):
    tmp = tmp_path_factory.mktemp("a")
    info = np.iinfo(dtype) if dtype != "bool" else None
    rng = np.random.default_rng(seed)
    data = (rng.integers(0, 2, (rows, features)).astype(bool) if info is None else
            rng.integers(info.min, info.max, (rows, features), dtype=dtype, endpoint=True))
    path = write_any(kind, tmp, data, chunk)
    itemsize = data.dtype.itemsize * features
    src = open_source([path], array="g/x", shard_bytes=shard_rows * itemsize,
                      batch_bytes=batch_rows * itemsize)
    if kind != "hdf5-contiguous":  # shards are runs of whole chunks
        assert all(s.start % chunk == 0 for s in src.shards)
    assert [s.stop for s in src.shards][-1] == rows
    assert [s.start for s in src.shards[1:]] == [s.stop for s in src.shards[:-1]]
    run = engine.compute(src)
    oracle = sn.compute_stats([data], layout="NF")
    assert run.rows == rows and run.stats.equals(oracle)
    assert run.stats.mean.tolist() == exact_mean(data)
    assert run.stats.min.tolist() == data.min(axis=0).astype(float).tolist()
    assert run.stats.max.tolist() == data.max(axis=0).astype(float).tolist()


# Dask runs the same readers as the local engine: once per library is enough.
@pytest.mark.parametrize("kind, engine_name, workers", [
    *[(k, "local", w) for k in KINDS for w in (1, 2)], ("zarr3", "dask", 1), ("hdf5", "dask", 1)])
def test_engines_workers_and_resumed_runs_agree_exactly(tmp_path, monkeypatch, kind, engine_name, workers):
    data = np.random.default_rng(3).integers(0, 65535, (200, 3), dtype=np.uint16, endpoint=True)
    path = write_any(kind, tmp_path, data, 16)
    kwargs = {"array": "g/x", "shard_bytes": 32 * 6}
    whole = engine.compute([path], engine=engine_name, workers=workers, **kwargs)
    assert len(whole.source.shards) == 7 and whole.stats.mean.tolist() == exact_mean(data)
    assert whole.stats.equals(sn.compute_stats([data], layout="NF"))

    original = engine.Checkpoint.record
    calls = []

    def record_then_ctrl_c(self, result):
        original(self, result)
        calls.append(result.shard_id)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.Checkpoint, "record", record_then_ctrl_c)
    with pytest.raises(engine.Interrupted):
        engine.compute([path], workers=1, checkpoint=tmp_path / "ck", **kwargs)
    monkeypatch.setattr(engine.Checkpoint, "record", original)
    resumed = engine.compute([path], engine=engine_name, workers=workers,
                             checkpoint=tmp_path / "ck", **kwargs)
    assert resumed.resumed == 2 and resumed.stats.equals(whole.stats)


def test_a_rewritten_zarr_chunk_is_seen_by_the_checkpoint(tmp_path):
    data = np.arange(40, dtype=np.int32).reshape(20, 2)
    write_zarr(tmp_path / "a.zarr", {"x": data}, 5, version=3)
    engine.compute([tmp_path / "a.zarr"], checkpoint=tmp_path / "ck")
    arr = zarr.open_array(str(tmp_path / "a.zarr" / "x"), mode="r+")
    arr[0:5] = data[0:5] + 1000
    with pytest.raises(engine.CheckpointError, match="a.zarr"):
        engine.compute([tmp_path / "a.zarr"], checkpoint=tmp_path / "ck")


@pytest.mark.parametrize("kind", ["zarr2", "zarr3", "hdf5"])
def test_array_choice_missing_ambiguous_and_non_numeric_are_listed(tmp_path, kind):
    arrays = {"a/temp": np.zeros((4, 2), "f4"), "b/rain": np.ones((4, 2), "i2")}
    if kind == "hdf5":
        path = tmp_path / "f.h5"
        write_h5(path, arrays, 2)
        with h5py.File(path, "a") as f:
            f.create_dataset("names", data=np.array([b"x", b"y"]))
    else:
        path = tmp_path / "f.zarr"
        write_zarr(path, arrays, 2, version=int(kind[-1]))
    with pytest.raises(SourceError, match=r"holds 2 numeric arrays \(a/temp, b/rain\); pass --array NAME"):
        open_source([path])
    with pytest.raises(SourceError, match=r"no array 'c' in this .*; its numeric arrays: a/temp, b/rain"):
        open_source([path], array="c")
    if kind == "hdf5":
        with pytest.raises(SourceError, match=r"array 'names'.*holds dtype \|S1.*numeric arrays: a/temp"):
            open_source([path], array="names")
    src = open_source([path], array="/b/rain")
    assert src.options.array == "b/rain"
    assert engine.compute(src).stats.mean.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("kind", ["zarr3", "hdf5"])
def test_layout_names_the_axes_of_higher_rank_arrays(tmp_path, kind):
    data = np.random.default_rng(1).integers(0, 255, (10, 3, 4, 5), dtype=np.uint8)
    path = write_any(kind, tmp_path, data, 3)
    with pytest.raises(LayoutError, match=r"array 'g/x' has shape \(10, 3, 4, 5\); pass --layout"):
        open_source([path])
    with pytest.raises(LayoutError):
        open_source([path], layout="NF")
    run = engine.compute([path], layout="NCHW", shard_bytes=60)
    assert len(run.source.shards) > 1
    assert run.stats.equals(sn.compute_stats([data], layout="NCHW"))
    whole = engine.compute([path], layout="CNHW")  # feature axis first: one shard
    assert len(whole.source.shards) == 1
    assert whole.stats.equals(sn.compute_stats([data], layout="CNHW"))


def test_many_files_and_stores_in_folders(tmp_path):
    rng = np.random.default_rng(2)
    parts = [rng.integers(-50, 50, (n, 2), dtype=np.int16) for n in (7, 1, 12)]
    folder = tmp_path / "stores"
    folder.mkdir()
    for i, part in enumerate(parts):
        write_zarr(folder / f"p{i}.zarr", {"x": part}, 4, version=2 + i % 2)
    src = open_source([folder])
    assert src.kind == "zarr" and len(src.shards) == 3 and not src.ignored_files
    assert engine.compute(src).stats.equals(sn.compute_stats(parts, layout="NF"))
    for i, part in enumerate(parts):
        write_h5(tmp_path / f"h{i}.h5", {"x": part}, 4)
    run = engine.compute([str(tmp_path / "h*.h5")])
    assert run.stats.equals(sn.compute_stats(parts, layout="NF"))
    write_h5(tmp_path / "other.h5", {"x": np.zeros((3, 5), "i2")}, 4)
    with pytest.raises(SourceError, match=r"disagree on their number of features"):
        open_source([tmp_path / "h0.h5", tmp_path / "other.h5"])


def test_fsspec_urls_are_read(tmp_path):
    data = np.random.default_rng(4).integers(0, 1000, (30, 2), dtype=np.uint16)
    write_zarr(tmp_path / "a.zarr", {"x": data}, 8, version=3)
    write_h5(tmp_path / "a.h5", {"x": data}, 8, compression="gzip")
    mem = fsspec.filesystem("memory")
    mem.put(str(tmp_path / "a.zarr"), "/arrays/a.zarr", recursive=True)
    mem.put(str(tmp_path / "a.h5"), "/arrays/a.h5")
    try:
        oracle = sn.compute_stats([data], layout="NF")
        for url in ("memory://arrays/a.zarr", "memory://arrays/a.h5"):
            run = engine.compute([url], shard_bytes=64)
            assert len(run.source.shards) == 2 and run.stats.equals(oracle), url
    finally:
        mem.rm("/arrays", recursive=True)


@pytest.mark.parametrize("attr", ["_FillValue", "nodata", "missing_value"])
@pytest.mark.parametrize("kind", ["zarr2", "zarr3", "hdf5"])
def test_a_declared_missing_value_is_recorded_and_reported(tmp_path, kind, attr):
    data = np.array([[1, -9999], [3, 4]], dtype=np.int32)
    if kind == "hdf5":
        path = tmp_path / "a.h5"
        write_h5(path, {"x": data}, 1, attrs={attr: np.int32(-9999)})
    else:
        path = tmp_path / "a.zarr"
        write_zarr(path, {"x": data}, 1, version=int(kind[-1]), attrs={attr: -9999})
    src = open_source([path])
    assert (src.nodata, src.nodata_attribute) == (-9999.0, attr)
    assert src.describe()["nodata"] == -9999.0
    code = main(["compute", str(path), "--store", str(tmp_path / "s"), "--split", "train", "--no-progress"])
    assert code == 0
    saved = sn.StatsStore(str(tmp_path / "s")).load("train")
    assert saved.min.tolist() == [1.0, 4.0]  # the declared missing value is skipped
    assert saved.masked_count.tolist() == [0, 1]
    code = main(["compute", str(path), "--store", str(tmp_path / "s"), "--split", "other", "--no-progress",
                 "--ignore-value", "1"])
    assert code == 0
    other = sn.StatsStore(str(tmp_path / "s")).load("other")  # --ignore-value overrides it
    assert other.min.tolist() == [3.0, -9999.0] and other.masked_count.tolist() == [1, 0]


def test_zarr_fill_value_alone_is_not_missing_data(tmp_path):
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="w", zarr_format=3)
    arr = group.create_array("x", shape=(4, 2), chunks=(2, 2), dtype="i4", fill_value=0)
    arr[:2] = 5  # the unwritten chunk reads as the fill value: a value like any other
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("x", shape=(4, 2), dtype="i4", chunks=(2, 2), fillvalue=7)
    for path in (tmp_path / "a.zarr", tmp_path / "a.h5"):
        src = open_source([path])
        assert src.nodata is None and "nodata" not in src.describe()
        assert engine.compute(src).stats.count.tolist() == [4, 4]


def test_nan_fill_value_follows_the_nan_policy_and_disagreeing_values_are_refused(tmp_path):
    data = np.array([[1.0], [np.nan], [3.0]])
    write_h5(tmp_path / "a.h5", {"x": data}, 1, attrs={"_FillValue": np.nan})
    src = open_source([tmp_path / "a.h5"])
    assert np.isnan(src.nodata) and json.dumps(src.describe())
    with pytest.raises(sn.StreamnormError, match=r"a\.h5 array 'x'"):
        engine.compute(src)
    assert engine.compute(src, nan_policy="omit").stats.nan_count.tolist() == [1]
    write_h5(tmp_path / "b.h5", {"x": data}, 1, attrs={"_FillValue": -1.0})
    with pytest.raises(SourceError, match=r"declare different missing-data values.*_FillValue=-1\.0"):
        open_source([tmp_path / "a.h5", tmp_path / "b.h5"])


def test_declared_nodata_takes_one_number():
    assert declared_nodata({}) is None
    assert declared_nodata({"nodata": "n/a", "missing_value": np.array([2.5])}) == (2.5, "missing_value")
    assert declared_nodata({"_FillValue": np.uint8(255), "nodata": 0}) == (255.0, "_FillValue")


def test_cli_reads_a_chosen_array_with_its_layout(tmp_path, capsys):
    data = np.random.default_rng(6).integers(0, 255, (6, 3, 4, 4), dtype=np.uint8)
    write_zarr(tmp_path / "m.zarr", {"raw/0": data, "labels": data[:, :1]}, 2, version=3,
               attrs={"nodata": 0})
    code = main(["compute", str(tmp_path / "m.zarr"), "--array", "raw/0", "--layout", "NCHW",
                 "--store", str(tmp_path / "s"), "--split", "train", "--histogram", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "3 features" in out and "uint8" in out
    assert "declares missing data 0.0 (nodata); values equal to it are skipped" in err
    saved = sn.StatsStore(str(tmp_path / "s")).load("train")
    assert saved.equals(sn.compute_stats([data], layout="NCHW", histogram=True, ignore_value=0))
    code = main(["compute", str(tmp_path / "m.zarr"), "--store", str(tmp_path / "s"), "--split", "t2",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "m.zarr: this Zarr store holds 2 numeric arrays (labels, raw/0); pass --array NAME" in err


def _corrupt_first_chunk(store: Path) -> None:
    chunk = next(p for p in sorted(store.rglob("*")) if p.is_file() and p.name in ("0.0", "0"))
    chunk.write_bytes(b"garbage, not a compressed chunk")


def test_an_unreadable_chunk_names_file_array_and_rows_and_is_skipped_on_request(tmp_path, capsys):
    data = np.arange(40, dtype=np.int64).reshape(20, 2)
    write_zarr(tmp_path / "a.zarr", {"x": data}, 5, version=2)
    _corrupt_first_chunk(tmp_path / "a.zarr")
    with pytest.raises(SourceError, match=r"a\.zarr array 'x' \(rows 0-4\): cannot read .*--skip-bad"):
        engine.compute([tmp_path / "a.zarr"], batch_bytes=80)
    for batch_bytes in (80, 2**20):  # one chunk per block, or all: only the bad chunk is skipped
        run = engine.compute([tmp_path / "a.zarr"], batch_bytes=batch_bytes, skip_bad=True)
        assert [w for w, _ in run.skipped] == [f"{tmp_path}/a.zarr array 'x' (rows 0-4)"]
        assert run.stats.equals(sn.compute_stats([data[5:]], layout="NF"))
    code = main(["compute", str(tmp_path / "a.zarr"), "--store", str(tmp_path / "s"), "--split", "x",
                 "--no-progress"])
    assert code == 1
    capsys.readouterr()
    code = main(["compute", str(tmp_path / "a.zarr"), "--store", str(tmp_path / "s"), "--split", "x",
                 "--no-progress", "--skip-bad"])
    err = capsys.readouterr().err
    assert code == 0 and "skipped 1 unreadable block: " in err and "a.zarr array 'x' (rows 0-" in err


@pytest.mark.parametrize("module, extra, path", [("zarr", "zarr", "a.zarr"), ("h5py", "hdf5", "a.h5")])
def test_without_the_library_the_error_names_the_extra(tmp_path, monkeypatch, module, extra, path):
    write_zarr(tmp_path / "a.zarr", {"x": np.zeros((2, 2))}, 1, version=3)
    write_h5(tmp_path / "a.h5", {"x": np.zeros((2, 2))}, 1)
    real_import = builtins.__import__

    def no_module(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named {module!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_module)
    with pytest.raises(SourceError, match=rf"needs {module}, which is not installed: "
                                          rf"pip install 'streamnorm\[{extra}\]'"):
        open_source([tmp_path / path])


def test_without_h5py_the_cli_says_one_line(tmp_path):
    write_h5(tmp_path / "a.h5", {"x": np.zeros((2, 2))}, 1)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "h5py.py").write_text("raise ImportError('h5py is not installed here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow), SRC]))
    res = subprocess.run([sys.executable, "-m", "streamnorm", "compute", str(tmp_path / "a.h5"),
                          "--store", str(tmp_path / "s"), "--split", "train", "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "needs h5py, which is not installed: pip install 'streamnorm[hdf5]'" in res.stderr
