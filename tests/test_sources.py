"""Offline sources: Parquet (nulls, tensors, image columns), image folders, .npy."""

from __future__ import annotations

import pickle
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamnorm as sn
from offline_helpers import decoded_rgb, png_bytes, write_images, write_table
from streamnorm.errors import LayoutError, NonFiniteError, StreamnormError
from streamnorm.sources import BadRecordError, SourceError, decode_image, open_source


def reduce_source(src, **kwargs):
    """Merge the shard partials in order: the source's statistics."""
    return sn.engine.merge_results([s.compute(**kwargs) for s in src.shards], src.feature_names)


def assert_close_to_numpy(stats, columns: dict[str, np.ndarray]) -> None:
    for f, (name, values) in enumerate(columns.items()):
        assert stats.feature_names[f] == name
        v = values.astype(np.float64)
        assert stats.count[f] == v.size
        np.testing.assert_allclose(stats.mean[f], v.mean(), rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(stats.std[f], v.std(), rtol=1e-10)
        assert stats.min[f] == v.min() and stats.max[f] == v.max()


# -- Parquet ------------------------------------------------------------------


def test_parquet_numeric_columns_by_row_group(tmp_path, rng):
    cols = write_table(tmp_path / "t.parquet", rng, rows=1000, row_group_size=100)
    src = open_source([tmp_path], shard_bytes=1)
    assert src.kind == "parquet" and src.layout == "NF"
    assert src.feature_names == ("i32", "u8", "f32", "f64")  # the string column is left out
    assert len(src.shards) == 10
    assert [s.id for s in src.shards] == [s.id for s in open_source([tmp_path], shard_bytes=1).shards]
    stats = reduce_source(src)
    assert_close_to_numpy(stats, cols)
    whole = reduce_source(open_source([tmp_path]))
    # integer columns are exact: identical bits whatever the sharding
    np.testing.assert_array_equal(stats.mean[:2], whole.mean[:2])
    np.testing.assert_array_equal(stats.m2[:2], whole.m2[:2])


def test_parquet_columns_argument_and_zero_copy(tmp_path, rng):
    cols = write_table(tmp_path / "t.parquet", rng)
    src = open_source([tmp_path / "t.parquet"], columns=["f64", "u8"])
    assert src.feature_names == ("f64", "u8")
    stats = reduce_source(src)
    assert_close_to_numpy(stats, {"f64": cols["f64"], "u8": cols["u8"]})
    assert [b.shape for b in src.shards[0].batches()] == [(100, 2)] * 10   # whole row groups
    small = open_source([tmp_path / "t.parquet"], columns=["f64", "u8"], batch_bytes=300)
    shapes = [b.shape[0] for b in small.shards[0].batches()]
    assert len(shapes) > 10 and sum(shapes) == 1000 and max(shapes) < 100
    assert reduce_source(small).count.tolist() == [1000, 1000]
    # a single column goes to the kernels without a copy
    col = pq.ParquetFile(tmp_path / "t.parquet").read_row_group(0, columns=["f64"]).column(0)
    values = sn.sources._arrow_to_numpy(col.chunk(0), nulls_as_nan=True)
    assert np.shares_memory(values, np.frombuffer(col.chunk(0).buffers()[1], np.float64))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(1, 300),
    group=st.integers(1, 120),
    null_rate=st.sampled_from([0.0, 0.1, 0.6, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_parquet_nulls_omitted_and_counted(tmp_path_factory, rows, group, null_rate, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("nulls") / "t.parquet"
    ints = {name: rng.integers(-1000, 1000, rows).astype(np.int16) for name in ("i", "j")}
    floats = rng.standard_normal(rows)
    floats[rng.random(rows) < 0.05] = np.nan          # real NaNs as well as nulls
    masks = {name: rng.random(rows) < null_rate for name in ("i", "j", "f")}
    masks["j"] &= rng.random(rows) < 0.5              # j: fewer nulls than i
    table = {name: pa.array(values, mask=masks[name]) for name, values in ints.items()}
    table["f"] = pa.array(floats, mask=masks["f"])
    table["g"] = pa.array(rng.standard_normal(rows).astype(np.float32))   # no nulls
    pq.write_table(pa.table(table), path, row_group_size=group)
    stats = reduce_source(open_source([path], shard_bytes=1), nan_policy="omit")
    assert stats.feature_names == ("i", "j", "f", "g")
    for f, name in enumerate(("i", "j")):
        kept = ints[name][~masks[name]]
        assert stats.count[f] == kept.size and stats.nan_count[f] == masks[name].sum()
        if kept.size:   # integer columns stay exact: the bits of one pass over the values
            exact = sn.compute_stats([kept.reshape(-1, 1)], layout="NF")
            assert stats.mean[f] == exact.mean[0] and stats.m2[f] == exact.m2[0]
            assert stats.min[f] == kept.min() and stats.max[f] == kept.max()
    f_all = np.where(masks["f"], np.nan, floats)
    f_ok = f_all[np.isfinite(f_all)]
    assert stats.count[2] == f_ok.size and stats.nan_count[2] == (~np.isfinite(f_all)).sum()
    if f_ok.size:
        np.testing.assert_allclose(stats.mean[2], f_ok.mean(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(stats.var[2], f_ok.var(), rtol=1e-9, atol=1e-14)
    else:
        assert np.isnan(stats.mean[2])
    assert stats.count[3] == rows and stats.nan_count[3] == 0


def test_parquet_nulls_under_raise_and_propagate(tmp_path):
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"i": pa.array([1, None, 3], pa.int32()),
                             "f": pa.array([1.0, None, 2.0])}), path)
    with pytest.raises(NonFiniteError, match=r"n\.parquet.*'i'.*null"):
        reduce_source(open_source([path]), nan_policy="raise")
    with pytest.raises(NonFiniteError, match="propagate"):
        reduce_source(open_source([path]), nan_policy="propagate")
    pq.write_table(pa.table({"f": pa.array([1.0, None, 2.0])}), path)
    with pytest.raises(NonFiniteError, match=r"n\.parquet"):
        reduce_source(open_source([path]), nan_policy="raise")
    stats = reduce_source(open_source([path]), nan_policy="propagate")
    assert np.isnan(stats.mean[0])


def test_parquet_fixed_size_list_column(tmp_path, rng):
    x = rng.standard_normal((50, 4)).astype(np.float32)
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4)
    pq.write_table(pa.table({"emb": col, "id": np.arange(50)}), tmp_path / "e.parquet",
                   row_group_size=16)
    src = open_source([tmp_path], columns=["emb"], shard_bytes=1)
    assert src.layout == "NF" and src.feature_names == ("emb[0]", "emb[1]", "emb[2]", "emb[3]")
    stats = reduce_source(src)
    np.testing.assert_allclose(stats.mean, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, x.astype(np.float64).std(0), rtol=1e-10)
    with pytest.raises(SourceError, match="tensors"):
        open_source([tmp_path], columns=["emb", "id"])


def test_parquet_nested_tensor_column_needs_layout(tmp_path, rng):
    x = rng.integers(0, 256, (20, 3, 2, 2)).astype(np.uint8)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 2)
    mid = pa.FixedSizeListArray.from_arrays(inner, 2)
    col = pa.FixedSizeListArray.from_arrays(mid, 3)
    pq.write_table(pa.table({"img": col}), tmp_path / "t.parquet", row_group_size=7)
    with pytest.raises(LayoutError, match="NCHW"):
        open_source([tmp_path], columns=["img"])
    src = open_source([tmp_path], columns=["img"], layout="NCHW", shard_bytes=1)
    stats = reduce_source(src, histogram=True)
    expected = sn.compute_stats([x], layout="NCHW", histogram=True)
    assert stats.equals(expected)


def test_parquet_fixed_shape_tensor_with_null_rows(tmp_path, rng):
    x = rng.standard_normal((10, 2, 3)).astype(np.float32)
    storage = pa.FixedShapeTensorArray.from_numpy_ndarray(x).storage
    mask = np.zeros(10, bool)
    mask[[2, 7]] = True
    with_nulls = pa.FixedSizeListArray.from_arrays(storage.values, 6, mask=pa.array(mask))
    tensor = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float32(), (2, 3)), with_nulls)
    pq.write_table(pa.table({"t": tensor}), tmp_path / "t.parquet")
    src = open_source([tmp_path], columns=["t"], layout="NHC")
    stats = reduce_source(src, nan_policy="omit")
    kept = x[~mask]
    np.testing.assert_allclose(stats.mean, kept.astype(np.float64).transpose(2, 0, 1)
                               .reshape(3, -1).mean(1), rtol=1e-12)
    assert stats.nan_count.tolist() == [2 * 2] * 3     # 2 null rows x 2 values per feature
    with pytest.raises(NonFiniteError):
        reduce_source(src, nan_policy="raise")


def test_parquet_image_column_binary_and_struct(tmp_path, rng):
    images = [rng.integers(0, 256, (6, 5, 3)).astype(np.uint8) for _ in range(9)]
    blobs = [png_bytes(a) for a in images]
    pq.write_table(pa.table({"png": pa.array(blobs, pa.binary()), "y": np.arange(9)}),
                   tmp_path / "bin.parquet", row_group_size=4)
    hf = pa.StructArray.from_arrays([pa.array(blobs), pa.array([f"{i}.png" for i in range(9)])],
                                    names=["bytes", "path"])
    pq.write_table(pa.table({"image": hf}), tmp_path / "hf.parquet", row_group_size=4)
    expected = sn.compute_stats([a[None] for a in images], layout="NHWC")
    for name, column in (("bin.parquet", "png"), ("hf.parquet", "image")):
        src = open_source([tmp_path / name], image_column=column, shard_bytes=1)
        assert src.layout == "NHWC" and src.unit == "images"
        assert reduce_source(src).equals(expected)


def test_parquet_image_column_bad_rows(tmp_path, rng):
    good = png_bytes(rng.integers(0, 256, (4, 4, 3)).astype(np.uint8))
    pq.write_table(pa.table({"img": pa.array([good, b"not an image", None, good])}),
                   tmp_path / "bad.parquet")
    src = open_source([tmp_path], image_column="img")
    with pytest.raises(BadRecordError, match=r"bad\.parquet row 1"):
        reduce_source(src)
    result = src.shards[0].compute(skip_bad=True)
    assert result.rows == 2
    assert [w.rsplit(" ", 1)[-1] for w, _ in result.skipped] == ["1", "2"]


def test_parquet_errors(tmp_path):
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(SourceError, match=r"fake\.parquet: not a readable Parquet file"):
        open_source([tmp_path / "fake.parquet"])
    pq.write_table(pa.table({"s": ["a", "b"], "t": pa.array([1, 2], pa.timestamp("s"))}),
                   tmp_path / "strings.parquet")
    with pytest.raises(SourceError, match=r"strings\.parquet: no numeric columns"):
        open_source([tmp_path / "strings.parquet"])
    with pytest.raises(SourceError, match="not numeric"):
        open_source([tmp_path / "strings.parquet"], columns=["s"])
    d = tmp_path / "two"
    d.mkdir()
    pq.write_table(pa.table({"a": [1.0], "b": [2.0]}), d / "1.parquet")
    pq.write_table(pa.table({"a": [1.0]}), d / "2.parquet")
    with pytest.raises(SourceError, match=r"2\.parquet: has no column 'b'"):
        open_source([d])
    with pytest.raises(SourceError, match="no such file"):
        open_source([tmp_path / "missing.parquet"])
    with pytest.raises(SourceError, match="no file matches"):
        open_source([str(tmp_path / "nothing-*.parquet")])
    (tmp_path / "data.bin").write_bytes(b"hello")
    with pytest.raises(SourceError, match=r"data\.bin: not a Parquet, image \(PNG, JPEG, BMP, GIF, "
                                          r"WebP, TIFF\), \.npy.* file; pass"):
        open_source([tmp_path / "data.bin"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no"):
        open_source([tmp_path / "empty"])


def test_mixed_kinds_are_refused(tmp_path, rng):
    write_table(tmp_path / "t.parquet", rng, rows=10)
    np.save(tmp_path / "x.npy", np.zeros(3))
    with pytest.raises(SourceError, match="mix"):
        open_source([tmp_path])


def test_fsspec_url_and_glob(tmp_path, rng):
    fs = fsspec.filesystem("memory")
    cols = {}
    for k in range(3):
        local = tmp_path / f"p{k}.parquet"
        cols[k] = write_table(local, rng, rows=200, row_group_size=50)
        fs.pipe(f"/sn-test-glob/part-{k}.parquet", local.read_bytes())
    fs.pipe("/sn-test-glob/_SUCCESS", b"")
    src = open_source(["memory://sn-test-glob/part-*.parquet"], shard_bytes=1)
    assert len(src.shards) == 12 and src.shards[0].files[0].url.startswith("memory://")
    folder = open_source(["memory://sn-test-glob/"], shard_bytes=1)
    assert [s.id for s in folder.shards] == [s.id for s in src.shards]
    merged = {name: np.concatenate([cols[k][name] for k in range(3)]) for name in cols[0]}
    assert_close_to_numpy(reduce_source(src), merged)


def test_shards_pickle_and_describe(tmp_path, rng):
    write_table(tmp_path / "t.parquet", rng, rows=300)
    src = open_source([tmp_path], shard_bytes=1, storage_options={"auto_mkdir": True})
    shard = src.shards[1]
    clone = pickle.loads(pickle.dumps(shard))
    assert clone == shard and clone.storage_options == {"auto_mkdir": True}
    assert clone.compute().stats.equals(shard.compute().stats)
    desc = shard.describe()
    assert desc["id"] == shard.id and desc["start"] == 1 and desc["stop"] == 2
    (info,) = desc["files"]
    assert info["size"] == (tmp_path / "t.parquet").stat().st_size and info["version"]


# -- images -------------------------------------------------------------------


def test_image_folder_modes(tmp_path, rng):
    from PIL import Image

    root = tmp_path / "imgs"
    paths = write_images(root / "train", 5, rng)
    rgb = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    gray = root / "train" / "a" / "gray.png"
    Image.fromarray(rgb).convert("L").save(gray)
    rgba = root / "train" / "b" / "rgba.png"
    rgba_arr = np.dstack([rgb, rng.integers(0, 256, (8, 8)).astype(np.uint8)])
    Image.fromarray(rgba_arr, "RGBA").save(rgba)
    pal = root / "train" / "b" / "pal.png"
    Image.fromarray(rgb).convert("P").save(pal)
    jpg = root / "train" / "a" / "photo.JPG"
    Image.fromarray(rgb).save(jpg, "JPEG")
    (root / "train" / ".hidden.png").write_bytes(b"junk")      # skipped: hidden
    (root / "train" / "notes.txt").write_text("not an image")   # skipped: not an image
    src = open_source([root], images_per_shard=3)
    files = paths + [gray, rgba, pal, jpg]
    assert src.layout == "NHWC" and len(src.shards) == 3
    assert sum(len(s.files) for s in src.shards) == len(files)
    stats = reduce_source(src, histogram=True)
    arrays = [decoded_rgb(p) for p in files]
    assert stats.equals(sn.compute_stats([a[None] for a in arrays], layout="NHWC", histogram=True))
    # grayscale repeats the gray value; RGBA keeps the colour, drops alpha
    g = decode_image(gray.read_bytes())
    assert g.shape == (8, 8, 3) and (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    np.testing.assert_array_equal(decode_image(rgba.read_bytes()), rgb)
    luma = open_source([root], image_mode="L")
    assert reduce_source(luma).n_features == 1


def test_undecodable_images(tmp_path, rng):
    write_images(tmp_path, 3, rng)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    src = open_source([tmp_path])
    with pytest.raises(BadRecordError, match=r"broken\.png: cannot decode image"):
        reduce_source(src)
    result = src.shards[0].compute(skip_bad=True)
    assert result.rows == 3
    assert [Path(w).name for w, _ in result.skipped] == ["broken.png"]
    # 16-bit images are read exactly: tests/test_images_16bit.py


# -- .npy -----------------------------------------------------------------------


def test_npy_memory_mapped_layouts(tmp_path, rng):
    x = rng.integers(0, 256, (40, 3, 4, 5)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(LayoutError, match="--layout"):
        open_source([tmp_path / "x.npy"])
    src = open_source([tmp_path / "x.npy"], layout="NCHW")
    assert reduce_source(src).equals(sn.compute_stats([x], layout="NCHW"))
    batch = next(src.shards[0].batches())
    assert isinstance(batch, np.memmap) or isinstance(batch.base, np.memmap)
    t = rng.standard_normal((30, 4))
    np.save(tmp_path / "t.npy", np.asfortranarray(t))
    stats = reduce_source(open_source([tmp_path / "t.npy"]))
    assert stats.layout == "NF"
    np.testing.assert_allclose(stats.mean, t.mean(0), rtol=1e-12)
    chw = rng.standard_normal((3, 6, 7))          # feature axis first: one piece
    np.save(tmp_path / "chw.npy", chw)
    stats = reduce_source(open_source([tmp_path / "chw.npy"], layout="CHW"))
    np.testing.assert_allclose(stats.mean, chw.reshape(3, -1).mean(1), rtol=1e-12)


def test_npy_remote_matches_local(tmp_path, rng):
    x = rng.integers(-500, 500, (1000, 3)).astype(np.int32)
    np.save(tmp_path / "x.npy", x)
    fsspec.filesystem("memory").pipe("/sn-test-npy/x.npy", (tmp_path / "x.npy").read_bytes())
    local = reduce_source(open_source([tmp_path / "x.npy"]))
    remote = reduce_source(open_source(["memory://sn-test-npy/x.npy"]))
    assert remote.equals(local) and local.equals(sn.compute_stats([x], layout="NF"))


def test_npy_refuses_objects_and_scalars(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match="never unpickled"):
        open_source([tmp_path / "obj.npy"])
    np.save(tmp_path / "s.npy", np.float64(3.0))
    with pytest.raises(SourceError, match="scalar"):
        open_source([tmp_path / "s.npy"])


def test_option_checks(tmp_path, rng):
    write_images(tmp_path, 2, rng)
    with pytest.raises(SourceError, match="Parquet"):
        open_source([tmp_path], columns=["x"])
    with pytest.raises(LayoutError, match="NHWC"):
        open_source([tmp_path], layout="NCHW")
    with pytest.raises(StreamnormError, match="image_mode"):
        open_source([tmp_path], image_mode="CMYK")
