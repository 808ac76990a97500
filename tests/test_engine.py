"""Offline engine: local pools vs Dask, deterministic merges, resumable checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamnorm as sn
from offline_helpers import SRC, write_images, write_table
from streamnorm import engine
from streamnorm.engine import CheckpointError
from streamnorm.sources import open_source


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(7)
    cols = [write_table(d / f"part-{k}.parquet", rng, rows=600, row_group_size=100)
            for k in range(3)]
    return d, {name: np.concatenate([c[name] for c in cols]) for name in cols[0]}


@pytest.fixture(scope="module")
def dask_client(tmp_path_factory):
    import dask

    distributed = pytest.importorskip("distributed")
    scratch = tmp_path_factory.mktemp("dask")  # not <tmp>/dask-scratch-space
    with dask.config.set({"temporary-directory": str(scratch)}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0",
            protocol="tcp://", host="127.0.0.1", local_directory=str(scratch),
        )
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


def test_local_workers_and_dask_agree_bit_for_bit(table_dir, dask_client):
    d, cols = table_dir
    runs = [
        engine.compute([d], workers=1, shard_bytes=1),
        engine.compute([d], workers=3, shard_bytes=1),
        engine.compute([d], engine="dask", scheduler=dask_client, shard_bytes=1),
        engine.compute([d], engine="dask", scheduler=dask_client.scheduler.address,
                       shard_bytes=1),
    ]
    first = runs[0].stats
    assert runs[0].shards == 18 and runs[0].rows == 1800
    for run in runs[1:]:
        assert run.stats.equals(first)
    # integer columns: exact, so also identical to one pass over everything
    ints = sn.compute_stats([np.stack([cols["i32"]], 1)], layout="NF")
    assert first.mean[0] == ints.mean[0] and first.m2[0] == ints.m2[0]
    np.testing.assert_allclose(first.mean[2:], [cols["f32"].astype(float).mean(),
                                                cols["f64"].mean()], rtol=1e-12)
    # another cut of the same data: integers stay bit-identical
    coarse = engine.compute([d], workers=2)
    assert coarse.shards == 3
    np.testing.assert_array_equal(coarse.stats.mean[:2], first.mean[:2])
    np.testing.assert_array_equal(coarse.stats.m2[:2], first.m2[:2])


def test_images_in_a_process_pool(tmp_path):
    rng = np.random.default_rng(3)
    write_images(tmp_path, 12, rng)
    inline = engine.compute([tmp_path], images_per_shard=4, histogram=True)  # small: inline
    pooled = engine.compute([tmp_path], workers=2, images_per_shard=4, histogram=True)
    assert pooled.shards == 3 and pooled.rows == 12
    assert pooled.stats.equals(inline.stats)


def test_mixed_column_types_across_files(tmp_path):
    # "x" is int32 in one file and float64 in the other: merged feature by feature
    pq.write_table(pa.table({"x": np.arange(10, dtype=np.int32), "y": np.ones(10)}),
                   tmp_path / "a.parquet")
    pq.write_table(pa.table({"x": np.arange(10, 20, dtype=np.float64), "y": np.ones(10)}),
                   tmp_path / "b.parquet")
    run = engine.compute([tmp_path], workers=1)
    assert run.stats.feature_names == ("x", "y")
    assert run.stats.mean.tolist() == [9.5, 1.0]


def test_tree_merge_shape_is_fixed():
    parts = [sn.compute_stats([np.array([[v]], dtype=np.float64)], layout="NF")
             for v in (0.1, 0.7, 1e8, 0.3, 5.0)]
    expected = ((parts[0] + parts[1]) + (parts[2] + parts[3])) + parts[4]
    assert engine.tree_merge(parts).equals(expected)


def test_argument_checks(table_dir):
    d, _ = table_dir
    with pytest.raises(sn.StreamnormError, match="engine"):
        engine.compute([d], engine="spark")
    with pytest.raises(sn.StreamnormError, match="workers"):
        engine.compute([d], workers=0)
    with pytest.raises(sn.StreamnormError, match="engine='dask'"):
        engine.compute([d], scheduler="tcp://127.0.0.1:1")
    with pytest.raises(sn.StreamnormError, match="nan_policy"):
        engine.compute([d], nan_policy="ignore")


def test_unreachable_scheduler():
    with pytest.raises(sn.StreamnormError, match="cannot reach the Dask scheduler"):
        engine._dask_client("tcp://127.0.0.1:9", None, timeout="1s")


# -- checkpoints ------------------------------------------------------------------


def test_checkpoint_resume_and_refusals(table_dir, tmp_path):
    d, _ = table_dir
    ckpt = tmp_path / "ckpt"
    full = engine.compute([d], shard_bytes=1, workers=2, checkpoint=str(ckpt))
    assert full.resumed == 0
    assert json.loads((ckpt / "manifest.json").read_text())["format"] == "streamnorm.checkpoint"
    markers = sorted((ckpt / "done").iterdir())
    assert len(markers) == 18
    for marker in markers[::3]:          # forget some shards
        marker.unlink()
    again = engine.compute([d], shard_bytes=1, workers=1, checkpoint=str(ckpt))
    assert again.resumed == 12 and again.stats.equals(full.stats)
    assert engine.compute([d], shard_bytes=1, checkpoint=str(ckpt)).resumed == 18
    with pytest.raises(CheckpointError, match="histogram"):
        engine.compute([d], shard_bytes=1, checkpoint=str(ckpt), histogram=True,
                       columns=["u8"])
    with pytest.raises(CheckpointError, match="nan_policy"):
        engine.compute([d], shard_bytes=1, checkpoint=str(ckpt), nan_policy="omit")
    with pytest.raises(CheckpointError, match="cut differently"):
        engine.compute([d], shard_bytes=10**9, checkpoint=str(ckpt))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not empty"):
        engine.compute([d], checkpoint=str(tmp_path / "busy"))


def test_checkpoint_refuses_changed_inputs(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "data").mkdir()
    write_table(tmp_path / "data" / "t.parquet", rng, rows=100)
    engine.compute([tmp_path / "data"], checkpoint=str(tmp_path / "ck"))
    write_table(tmp_path / "data" / "t.parquet", rng, rows=120)
    with pytest.raises(CheckpointError, match=r"input files \(.*t\.parquet changed"):
        engine.compute([tmp_path / "data"], checkpoint=str(tmp_path / "ck"))


def test_checkpoint_on_fsspec_url(table_dir):
    d, _ = table_dir
    url = "memory://sn-ckpt-test/run"
    first = engine.compute([d], shard_bytes=1, checkpoint=url)
    second = engine.compute([d], shard_bytes=1, checkpoint=url)
    assert second.resumed == first.shards and second.stats.equals(first.stats)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {src!r})
    from streamnorm import engine, sources
    original = sources.Shard.compute
    def slow(self, *args, **kwargs):
        time.sleep(0.05)
        return original(self, *args, **kwargs)
    sources.Shard.compute = slow
    engine.compute([{data!r}], shard_bytes=1, workers=1, checkpoint={ckpt!r})
    print("finished")
""")


def _done(ckpt: Path) -> int:
    folder = ckpt / "done"
    return len([p for p in folder.iterdir() if p.suffix == ".json"]) if folder.exists() else 0


def test_kill_9_mid_run_then_resume_gives_identical_stats(tmp_path):
    rng = np.random.default_rng(11)
    data = tmp_path / "data"
    data.mkdir()
    for k in range(2):
        write_table(data / f"p{k}.parquet", rng, rows=1500, row_group_size=100)  # 30 shards
    reference = engine.compute([data], shard_bytes=1, workers=1)
    ckpt = tmp_path / "ckpt"
    script = KILL_SCRIPT.format(src=SRC, data=str(data), ckpt=str(ckpt))
    killed_at = []
    for target in (1, 9, 17):            # kill three times, at different points
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while _done(ckpt) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        killed_at.append(_done(ckpt))
    assert killed_at == sorted(killed_at) and 0 < killed_at[-1] < reference.shards
    resumed = engine.compute([data], shard_bytes=1, workers=2, checkpoint=str(ckpt))
    assert resumed.resumed == killed_at[-1]
    assert resumed.stats.equals(reference.stats)
    assert resumed.rows == reference.rows == 3000


def test_progress_bar_reports_shards_rows_and_rate(table_dir, capsys):
    d, _ = table_dir
    engine.compute([d], shard_bytes=1, workers=1,
                   progress=engine.TqdmProgress(enabled=True, desc="test"))
    err = capsys.readouterr().err
    assert "18/18 shards" in err and "1,800 rows" in err and "B/s" in err
    engine.compute([d], workers=1, progress=None)   # not a terminal: silent
    assert capsys.readouterr().err == ""


def test_source_object_can_be_passed(table_dir):
    d, _ = table_dir
    src = open_source([d], columns=["u8"], shard_bytes=1)
    run = engine.compute(src, histogram=True, workers=1)
    assert run.stats.histogram is not None and run.source is src
    assert run.summary()["files"] == 3


def test_local_cluster_binds_no_fixed_port():
    client, local = engine._dask_client(None, 1)
    try:
        cluster = local.cluster
        ports = {sock.getsockname()[1] for sock in
                 cluster.scheduler.services["dashboard"]._sockets.values()}
        assert 8787 not in ports and all(p > 0 for p in ports)
        assert not cluster.scheduler.address.endswith(":8786")
        assert os.path.isdir(local.directory)
    finally:
        local.close()
    assert not os.path.exists(local.directory)
