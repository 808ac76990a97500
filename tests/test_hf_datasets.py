"""Hugging Face ``datasets`` folders (issue 11), written by the real ``save_to_disk``.

Read with pyarrow alone; columns as the Parquet source treats them.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import datasets  # dev dependency: the writer of the test folders
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

import streamnorm as sn
from offline_helpers import SRC, run_cli
from streamnorm import engine
from streamnorm.cli import main
from streamnorm.sources import BadRecordError, SourceError, open_source

datasets.disable_progress_bars()
FEATURES = Features({"a": Value("int32"), "b": Value("float64"), "u": Value("uint8"),
                     "name": Value("string")})


def save(folder, columns, features=FEATURES, num_shards=1):
    Dataset.from_dict(columns, features=features).save_to_disk(str(folder), num_shards=num_shards)
    return folder


def exact_int_stats(values):
    """Mean and m2 of Python ints: the oracle of the integer path."""
    n, s = len(values), sum(values)
    m2 = sum((v * n - s) ** 2 for v in values)
    return s / n, m2 / n**2


rows = st.lists(st.tuples(st.one_of(st.none(), st.integers(-2**31, 2**31 - 1)),
                          st.floats(-1e6, 1e6), st.integers(0, 255)), min_size=1, max_size=40)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=rows, num_shards=st.integers(1, 3))
def test_numeric_columns_match_the_parquet_source_and_are_exact(tmp_path_factory, data, num_shards):
    tmp = tmp_path_factory.mktemp("hf")
    num_shards = min(num_shards, len(data))
    cols = {"a": [r[0] for r in data], "b": [r[1] for r in data], "u": [r[2] for r in data],
            "name": [f"r{i}" for i in range(len(data))]}
    folder = save(tmp / "ds", cols, num_shards=num_shards)
    run = engine.compute([str(folder)], nan_policy="omit", workers=2)
    assert run.source.kind == "hf" and len(run.source.shards) == num_shards
    assert run.stats.feature_names == ("a", "b", "u") and run.rows == len(data)
    pq.write_table(pa.table(cols, schema=FEATURES.arrow_schema), tmp / "same.parquet")
    parquet = engine.compute([str(tmp / "same.parquet")], nan_policy="omit")
    for name in ("count", "nan_count", "min", "max"):
        assert np.array_equal(getattr(run.stats, name), getattr(parquet.stats, name), equal_nan=True), name
    # integer columns (a, u) are exact whatever the cut; the float column b merges shards (Chan)
    for name in ("mean", "m2"):
        ours, theirs = getattr(run.stats, name), getattr(parquet.stats, name)
        assert np.array_equal(ours[[0, 2]], theirs[[0, 2]], equal_nan=True), name
        assert ours[1] == pytest.approx(theirs[1], rel=1e-12, abs=1e-9), name
    ints = [v for v in cols["a"] if v is not None]
    if ints:
        mean, m2 = exact_int_stats(ints)
        assert run.stats.mean[0] == mean and run.stats.m2[0] == pytest.approx(m2, rel=1e-15)
    assert run.stats.nan_count[0] == cols["a"].count(None)
    u = engine.compute([str(folder)], histogram=True, columns=["u"], workers=1).stats
    assert np.array_equal(u.histogram[0], np.bincount(cols["u"], minlength=256))


def png(array):
    buf = io.BytesIO()
    PILImage.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def image_dataset(folder, rng, n=7, num_shards=2):
    images = [rng.integers(0, 256, (5, 3 + i % 2, 3), dtype=np.uint8) for i in range(n)]
    save(folder, {"image": [PILImage.fromarray(im) for im in images], "label": list(range(n))},
         Features({"image": Image(), "label": Value("int64")}), num_shards=num_shards)
    return images


def test_image_column_is_decoded_exactly_across_workers_and_engines(tmp_path):
    images = image_dataset(tmp_path / "ds", np.random.default_rng(0))
    run = engine.compute([str(tmp_path / "ds")], image_column="image", histogram=True, workers=2)
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.int64)
    assert run.stats.layout == "NHWC" and run.rows == 7 and run.source.unit == "images"
    assert run.stats.mean.tolist() == [s / len(pixels) for s in pixels.sum(axis=0).tolist()]
    assert np.array_equal(run.stats.histogram,
                          np.stack([np.bincount(pixels[:, c], minlength=256) for c in range(3)]))
    assert run.stats.equals(engine.compute([str(tmp_path / "ds")], image_column="image",
                                           histogram=True, workers=1).stats)
    dask = engine.compute([str(tmp_path / "ds")], image_column="image", histogram=True,
                          engine="dask", workers=2)
    assert dask.stats.equals(run.stats)


def test_corrupt_image_names_file_and_row_and_is_skipped_with_skip_bad(tmp_path):
    rng = np.random.default_rng(1)
    good = [png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)) for _ in range(3)]
    values = [{"bytes": good[0], "path": None}, {"bytes": b"\x89PNG\r\n\x1a\nbroken", "path": None},
              {"bytes": good[2], "path": None}]
    save(tmp_path / "ds", {"image": values}, Features({"image": Image()}))
    with pytest.raises(BadRecordError, match=r"data-00000-of-00001\.arrow row 1: cannot decode"):
        engine.compute([str(tmp_path / "ds")], image_column="image")
    run = engine.compute([str(tmp_path / "ds")], image_column="image", skip_bad=True)
    assert run.rows == 2 and run.skipped[0][0].endswith("data-00000-of-00001.arrow row 1")


def test_tensor_column_as_parquet_tensor_columns(tmp_path):
    rng = np.random.default_rng(2)
    vecs = rng.integers(-100, 100, (9, 3)).astype(np.int16)
    save(tmp_path / "ds", {"v": vecs.tolist()}, Features({"v": Sequence(Value("int16"), length=3)}))
    run = engine.compute([str(tmp_path / "ds")], columns=["v"])
    assert run.stats.feature_names == ("v[0]", "v[1]", "v[2]")
    assert run.stats.mean.tolist() == (vecs.astype(np.int64).sum(axis=0) / 9).tolist()


def test_dataset_dict_is_addressed_by_its_split_folder(tmp_path):
    d = Dataset.from_dict({"a": [1, 2, 3], "b": [0.5, 1.0, 4.0], "u": [1, 2, 3], "name": list("xyz")},
                          features=FEATURES)
    DatasetDict({"train": d, "test": d.select([0])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(SourceError, match=r"dd: a DatasetDict \(splits train, test\); pass one "
                                          r"split's folder, e.g. .*dd/train"):
        open_source([str(tmp_path / "dd")])
    code = main(["compute", str(tmp_path / "dd" / "test"), "--store", str(tmp_path / "st"),
                 "--split", "test", "--no-progress"])
    assert code == 0
    assert sn.load_stats(tmp_path / "st", "test").mean.tolist() == [1.0, 0.5, 1.0]
    r = run_cli("compute", str(tmp_path / "dd"), "--store", str(tmp_path / "st"), "--split", "x")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "DatasetDict" in r.stderr


def test_state_json_order_is_kept_and_cache_files_are_left_out(tmp_path):
    folder = save(tmp_path / "ds", {"a": list(range(20)), "b": [0.0] * 20, "u": [0] * 20,
                                    "name": ["n"] * 20}, num_shards=3)
    state = json.loads((folder / "state.json").read_text())
    (folder / "cache-123.arrow").write_bytes((folder / "data-00000-of-00003.arrow").read_bytes())
    src = open_source([str(folder)])
    assert [s.files[0].name for s in src.shards] == [e["filename"] for e in state["_data_files"]]
    assert [f.rsplit("/", 1)[-1] for f in src.ignored_files] == ["cache-123.arrow"]
    assert [s.id for s in src.shards] == [f"hf:{s.files[0].url}" for s in src.shards]
    (folder / "data-00001-of-00003.arrow").unlink()
    with pytest.raises(SourceError, match=r"state\.json: lists 'data-00001-of-00003\.arrow', which "
                                          r"is missing"):
        open_source([str(folder)])


def test_truncated_arrow_file_is_an_error_naming_it(tmp_path):
    folder = save(tmp_path / "ds", {"a": list(range(3000)), "b": [1.0] * 3000, "u": [1] * 3000,
                                    "name": ["n"] * 3000})
    path = folder / "data-00000-of-00001.arrow"
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(SourceError, match=r"data-00000-of-00001\.arrow: cannot read Arrow data"):
        engine.compute([str(folder)], batch_bytes=1000)


def test_checkpoint_resume_gives_identical_stats(tmp_path, monkeypatch):
    folder = save(tmp_path / "ds", {"a": list(range(30)), "b": [0.25 * i for i in range(30)],
                                    "u": [i % 7 for i in range(30)], "name": ["n"] * 30},
                  num_shards=3)
    reference = engine.compute([str(folder)])
    from streamnorm.sources.hf import HFDatasetFormat

    original = HFDatasetFormat.reduce

    def crash_on_last(self, shard, *args, **kwargs):
        if shard.files[0].name.startswith("data-00002"):
            raise SourceError("simulated crash")
        return original(self, shard, *args, **kwargs)

    monkeypatch.setattr(HFDatasetFormat, "reduce", crash_on_last)
    with pytest.raises(SourceError, match="simulated crash"):
        engine.compute([str(folder)], workers=1, checkpoint=str(tmp_path / "ck"))
    monkeypatch.setattr(HFDatasetFormat, "reduce", original)
    resumed = engine.compute([str(folder)], workers=1, checkpoint=str(tmp_path / "ck"))
    assert resumed.resumed == 2 and resumed.stats.equals(reference.stats)


def test_reading_needs_no_datasets_package(tmp_path):
    folder = save(tmp_path / "ds", {"a": [1, 2, 6], "b": [0.5, 1.5, 2.5], "u": [3, 4, 5],
                                    "name": list("abc")})
    script = (f"import sys; sys.path.insert(0, {SRC!r}); sys.modules['datasets'] = None\n"
              f"from streamnorm import engine\n"
              f"print(engine.compute([{str(folder)!r}]).stats.mean.tolist())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert json.loads(out) == [3.0, 1.5, 4.0]


def test_fsspec_url_reads_the_same_as_the_local_folder(tmp_path):
    import fsspec

    folder = save(tmp_path / "ds", {"a": list(range(50)), "b": [0.5 * i for i in range(50)],
                                    "u": [i % 5 for i in range(50)], "name": ["n"] * 50},
                  num_shards=2)
    fs = fsspec.filesystem("memory")
    for path in folder.iterdir():
        fs.pipe(f"/hf-test/ds/{path.name}", path.read_bytes())
    try:
        remote = engine.compute(["memory://hf-test/ds"])
        assert remote.stats.equals(engine.compute([str(folder)]).stats)
    finally:
        fs.rm("/hf-test", recursive=True)
