"""AnnData .h5ad sources (files written by anndata): X dense/CSR/CSC, layers, per gene, bounded reads."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad  # the real writer (dev dependency); reading needs only h5py + scipy
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamnorm as sn
from offline_helpers import SRC, run_cli
from streamnorm import engine
from streamnorm.cli import main
from streamnorm.sources import SourceError, open_source

ENCODINGS = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}


def write_h5ad(path: Path, dense: np.ndarray, encoding: str, layers: dict | None = None) -> Path:
    """An .h5ad written by anndata itself, X in ``encoding``, genes named g0, g1, ..."""
    names = [f"g{i}" for i in range(dense.shape[1])]
    adata = ad.AnnData(X=ENCODINGS[encoding](dense), var=pd.DataFrame(index=names))
    for name, (value, enc) in (layers or {}).items():
        adata.layers[name] = ENCODINGS[enc](value)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(path)
    return path


def counts(rng: np.random.Generator, rows: int, cols: int, dtype=np.int32, density: float = 0.1) -> np.ndarray:
    values = rng.integers(1, 1000, (rows, cols)).astype(dtype)
    return np.where(rng.random((rows, cols)) < density, values, 0).astype(dtype)


def oracle(dense: np.ndarray, **kw) -> sn.Stats:
    names = [f"g{i}" for i in range(dense.shape[1])]
    return sn.compute_stats([dense], layout="NF", feature_names=names, **kw)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), encoding=st.sampled_from(sorted(ENCODINGS)),
       dtype=st.sampled_from([np.int32, np.uint16, np.uint8, np.int64]),
       rows=st.integers(1, 120), cols=st.integers(1, 9), density=st.floats(0, 1),
       batch_bytes=st.integers(1, 400), shard_bytes=st.integers(1, 2000), workers=st.integers(1, 2))
def test_item2_h5ad_integer_x_is_exact_for_every_encoding_and_cut(tmp_path_factory, seed, encoding, dtype, rows,
                                                                  cols, density, batch_bytes, shard_bytes, workers):
    tmp = tmp_path_factory.mktemp("h5ad")
    dense = counts(np.random.default_rng(seed), rows, cols, dtype, density)
    path = write_h5ad(tmp / "a.h5ad", dense, encoding)
    run = engine.compute([path], batch_bytes=batch_bytes, shard_bytes=shard_bytes, workers=workers)
    want = oracle(dense)
    assert run.rows == rows and run.stats.feature_names == want.feature_names
    if np.dtype(dtype).itemsize == 8:  # int64 takes the float path: one pass's accuracy, not bits
        np.testing.assert_allclose(run.stats.m2, want.m2, rtol=1e-12)
        np.testing.assert_allclose(run.stats.mean, want.mean, rtol=1e-13)
        return
    assert run.stats.equals(want)
    assert run.stats.int_sum == tuple(int(v) for v in dense.astype(object).sum(axis=0))


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_item2_h5ad_float_x_and_layers_through_the_cli(tmp_path, encoding):
    rng = np.random.default_rng(1)
    raw = counts(rng, 300, 6, np.int32, 0.2)
    logged = np.log1p(raw).astype(np.float32)
    path = write_h5ad(tmp_path / "d" / "cells.h5ad", logged, encoding,
                      layers={"counts": (raw, "csr"), "dense_counts": (raw.astype(np.uint16), "dense")})
    assert main(["compute", str(path), "--store", str(tmp_path / "s"), "--split", "x", "--no-progress"]) == 0
    got = sn.load_stats(str(tmp_path / "s"), "x")
    x = logged.astype(np.float64)
    assert got.feature_names == tuple(f"g{i}" for i in range(6))
    np.testing.assert_allclose(got.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got.var, x.var(axis=0), rtol=1e-10)
    np.testing.assert_array_equal(got.min, x.min(axis=0))
    for layer, dtype in (("counts", "int32"), ("dense_counts", "uint16")):
        assert main(["compute", str(tmp_path / "d"), "--array", f"layers/{layer}", "--store",
                     str(tmp_path / "s"), "--split", layer, "--no-progress"]) == 0
        stats = sn.load_stats(str(tmp_path / "s"), layer)
        assert stats.dtype == dtype and stats.equals(oracle(raw.astype(dtype)))


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_item2_h5ad_dask_and_resumed_runs_are_identical(tmp_path, monkeypatch, encoding):
    rng = np.random.default_rng(2)
    parts = [counts(rng, 200, 5, np.int32, 0.3) for _ in range(3)]
    for i, part in enumerate(parts):
        write_h5ad(tmp_path / "data" / f"p{i}.h5ad", part, encoding, layers={"same": (part, encoding)})
    want = oracle(np.concatenate(parts))
    kw = {"shard_bytes": 512, "batch_bytes": 128}
    local = engine.compute([tmp_path / "data"], workers=2, **kw)
    assert local.stats.equals(want) and len(local.source.shards) >= 3
    dask = engine.compute([tmp_path / "data"], engine="dask", workers=1, **kw)
    assert dask.stats.equals(want)

    original, calls = engine.Checkpoint.record, []

    def record_then_ctrl_c(self, result):
        original(self, result)
        calls.append(result.shard_id)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.Checkpoint, "record", record_then_ctrl_c)
    with pytest.raises(engine.Interrupted):
        engine.compute([tmp_path / "data"], workers=1, checkpoint=tmp_path / "ck", **kw)
    monkeypatch.setattr(engine.Checkpoint, "record", original)
    resumed = engine.compute([tmp_path / "data"], workers=2, checkpoint=tmp_path / "ck", **kw)
    assert resumed.resumed == 2 and resumed.stats.equals(want)
    with pytest.raises(engine.CheckpointError):  # another matrix is another run
        engine.compute([tmp_path / "data"], array="layers/same", workers=1, checkpoint=tmp_path / "ck", **kw)


def test_item2_h5ad_histogram_of_8bit_counts_is_exact(tmp_path):
    dense = counts(np.random.default_rng(3), 150, 4, np.uint8, 0.25)
    for enc in ENCODINGS:
        run = engine.compute([write_h5ad(tmp_path / f"{enc}.h5ad", dense, enc)], histogram=True, batch_bytes=64)
        assert run.stats.equals(oracle(dense, histogram=True))
        np.testing.assert_array_equal(run.stats.quantile(0.9), np.quantile(dense, 0.9, axis=0))


def test_item2_h5ad_sparse_reads_are_bounded_row_or_column_blocks(tmp_path, monkeypatch):
    dense = counts(np.random.default_rng(4), 400, 30, np.int32, 0.05)
    budget = 256
    for enc in ("csr", "csc"):
        path = write_h5ad(tmp_path / f"{enc}.h5ad", dense, enc)
        seen = []
        original = sn.StatsAccumulator.update

        def spy(self, batch, *a, **k):
            seen.append(batch)
            return original(self, batch, *a, **k)

        monkeypatch.setattr(sn.StatsAccumulator, "update", spy)
        monkeypatch.setattr(sp.csr_matrix, "toarray", lambda *a, **k: pytest.fail("densified"))
        monkeypatch.setattr(sp.csc_matrix, "toarray", lambda *a, **k: pytest.fail("densified"))
        run = engine.compute([path], batch_bytes=budget, workers=1)
        monkeypatch.undo()
        assert run.stats.equals(oracle(dense))
        assert len(seen) > 1 and all(sp.issparse(b) for b in seen)
        entry = 8  # int32 value + int32 index
        single = [b for b in seen if b.nnz * entry > budget]
        # only a block of one row (CSR) or one gene (CSC) may exceed the budget
        assert all(b.shape[0 if enc == "csr" else 1] == 1 for b in single)
        blocks = list(open_source([path]).shards[0].batches())  # Shard.batches: rows, also for CSC
        assert sp.vstack(blocks).toarray().tolist() == dense.tolist()


def test_item2_h5ad_errors_name_file_and_matrix(tmp_path):
    path = write_h5ad(tmp_path / "a.h5ad", counts(np.random.default_rng(5), 10, 3), "csr",
                      layers={"counts": (np.ones((10, 3), np.int32), "csr")})
    with pytest.raises(SourceError, match=r"a\.h5ad: has no matrix 'layers/nope'; pass --array X or one of "
                                          r"layers/counts"):
        open_source([path], array="layers/nope")
    with pytest.raises(sn.StreamnormError, match="layout 'NF'"):
        open_source([path], layout="NCHW")
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"not hdf5 at all")
    res = run_cli("compute", str(bad), "--store", str(tmp_path / "s"), "--split", "t", "--no-progress")
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "bad.h5ad: not a readable .h5ad (HDF5) file" in res.stderr
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    with pytest.raises(SourceError, match="--array names a matrix inside a file, but npy files"):
        open_source([tmp_path / "x.npy"], array="X")
    # a damaged dataset inside a good file: one line naming the file and the matrix
    import h5py

    with h5py.File(path, "a") as f:
        del f["X/indices"]
        f["X/indices"] = np.arange(3, dtype=np.int32)  # far too short for data
    with pytest.raises(SourceError, match=r"a\.h5ad: X"):
        engine.compute([path])


def test_item2_h5ad_files_must_share_their_genes(tmp_path):
    write_h5ad(tmp_path / "d" / "a.h5ad", np.ones((4, 3), np.int32), "csr")
    other = ad.AnnData(X=sp.csr_matrix(np.ones((4, 3), np.int32)), var=pd.DataFrame(index=["x", "y", "z"]))
    other.write_h5ad(tmp_path / "d" / "b.h5ad")
    with pytest.raises(SourceError, match="var_names differ"):
        open_source([tmp_path / "d"])


def test_item2_without_h5py_the_error_names_the_anndata_extra(tmp_path):
    path = write_h5ad(tmp_path / "a.h5ad", np.ones((4, 3), np.int32), "csr")
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "h5py.py").write_text("raise ImportError('h5py is not installed here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow), SRC]))
    res = subprocess.run([sys.executable, "-m", "streamnorm", "compute", str(path), "--store",
                          str(tmp_path / "s"), "--split", "train", "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "reading .h5ad files needs h5py and scipy" in res.stderr
    assert "pip install 'streamnorm[anndata]'" in res.stderr
