"""StatsStore on S3: a real HTTP endpoint on loopback (moto's threaded server) through s3fs."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import streamnorm as sn
from _store_helpers import oracle_stats
from streamnorm.errors import StatsFileError
from streamnorm.fsutil import describe_sources

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'streamnorm[s3]')")

BUCKET = "streamnorm-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1, on a port the OS picks; stopped afterwards."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "us-east-1"},
            "skip_instance_cache": True,
        }
        fs = s3fs.S3FileSystem(**options)
        fs.call_s3("create_bucket", Bucket=BUCKET)
        yield options
    finally:
        server.stop()


@pytest.fixture
def store(s3):
    return sn.StatsStore(f"s3://{BUCKET}/{uuid.uuid4().hex}/stats", storage_options=s3)


def test_round_trip_and_listing(store, s3):
    x = np.arange(60, dtype=np.uint8).reshape(20, 3)
    train = sn.compute_stats([x[:10]], layout="NF", histogram=True)
    val = sn.compute_stats([x[10:].astype(np.float32)], layout="NF")
    path = store.save(train, "train")
    store.save(val, "val")
    assert path == f"{store.root}/split=train/stats.parquet"
    assert store.splits() == ["train", "val"]
    assert store.load("train").equals(train)
    assert store.load("val").equals(val)
    assert sn.load_stats(store.root, "val", storage_options=s3).equals(val)
    assert store.exists("train") and not store.exists("test")
    # one whole object, no temporary objects left behind
    fs = store.fs
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1]
                  for p in fs.find(store.root)) == ["split=train/stats.parquet",
                                                    "split=val/stats.parquet"]


def test_overwrite_and_missing(store):
    a = oracle_stats(np.zeros((2, 2), dtype=np.uint8))
    b = oracle_stats(np.ones((2, 2), dtype=np.uint8))
    store.save(a, "train")
    with pytest.raises(StatsFileError, match="already exists"):
        store.save(b, "train")
    assert store.load("train").equals(a)
    store.save(b, "train", overwrite=True)
    assert store.load("train").equals(b)
    with pytest.raises(StatsFileError, match="no statistics for split 'val'.*'train'"):
        store.load("val")
    store.delete("train")
    assert store.splits() == []


def test_cv_merge_on_s3(store):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(300, 3), dtype=np.uint8)
    folds = [f"fold-{k}" for k in range(3)]
    for k, fold in enumerate(folds):
        store.save(sn.compute_stats([x[k::3]], layout="NF", histogram=True), fold)
    rest = np.concatenate([x[0::3], x[2::3]])
    assert store.merge_except("fold-1", among=folds).equals(
        sn.compute_stats([rest], layout="NF", histogram=True))


def test_bad_object_and_source_etag(store, s3):
    store.fs.pipe_file(f"{store.root}/split=junk/stats.parquet", b"not parquet at all")
    with pytest.raises(StatsFileError, match=r"split=junk/stats\.parquet: not a readable"):
        store.load("junk")
    described = describe_sources([f"{store.root}/split=junk/stats.parquet"],
                                 storage_options=s3)
    assert described[0]["size"] == len(b"not parquet at all")
    assert described[0]["etag"] and described[0]["mtime"]


def test_missing_bucket_is_a_clear_error(s3):
    store = sn.StatsStore(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x", storage_options=s3)
    with pytest.raises(StatsFileError, match="could not write split 'train'"):
        store.save(oracle_stats(np.ones((2, 1), dtype=np.uint8)), "train")
    assert store.splits() == []


def test_exclusive_create_is_enforced_by_s3_itself(store, monkeypatch):
    # Skip the client-side existence check: the conditional PUT (If-None-Match: *)
    # alone must refuse to replace the object.
    a = oracle_stats(np.zeros((2, 2), dtype=np.uint8))
    store.save(a, "train")
    monkeypatch.setattr(store.fs, "exists", lambda path, **kw: False)
    with pytest.raises(StatsFileError, match="already exists"):
        store.save(oracle_stats(np.ones((2, 2), dtype=np.uint8)), "train")
    monkeypatch.undo()
    assert store.load("train").equals(a)


def test_racing_creators_on_s3_one_wins(store):
    import threading

    stats = [oracle_stats(np.full((2, 2), k, dtype=np.uint8)) for k in range(2)]
    for r in range(5):
        barrier = threading.Barrier(2)
        outcome = [None, None]

        def create(k, r=r, barrier=barrier, outcome=outcome):
            barrier.wait(timeout=10)
            try:
                store.save(stats[k], f"round-{r}")
                outcome[k] = "won"
            except StatsFileError:
                outcome[k] = "refused"

        threads = [threading.Thread(target=create, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(outcome) == ["refused", "won"]
        assert store.load(f"round-{r}").equals(stats[outcome.index("won")])
