"""TIFF through tifffile (issue 11, "TIFF"): 8- and 16-bit, any channel count, every page.

Files are written by tifffile itself; the oracle is tifffile's own read of the
same file (and Python integers for the exact mean of 16-bit data).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from offline_helpers import SRC, run_cli
from streamnorm import engine
from streamnorm.sources import BadRecordError, SourceError, decode_image, open_source
from streamnorm.sources._decode import decode_frames


def tiff_bytes(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


def pages_of(array: np.ndarray, channels: int, planar: str) -> list[np.ndarray]:
    """The ``(H, W, C)`` pages that ``array`` (as written) holds."""
    if channels == 1:
        pages = array if array.ndim == 3 else array[None]
        return [p[:, :, None] for p in pages]
    if planar == "separate":
        stack = array if array.ndim == 4 else array[None]
        return [np.moveaxis(p, 0, -1) for p in stack]
    return list(array if array.ndim == 4 else array[None])


@st.composite
def tiffs(draw):
    dtype = draw(st.sampled_from([np.uint8, np.uint16]))
    channels = draw(st.sampled_from([1, 3, 4, 6]))
    pages = draw(st.integers(1, 3))
    h, w = draw(st.integers(2, 9)), draw(st.integers(2, 9))
    planar = draw(st.sampled_from(["contig", "separate"])) if channels > 1 else "contig"
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (channels, h, w) if planar == "separate" else (h, w, channels)
    array = rng.integers(0, np.iinfo(dtype).max + 1, (pages, *shape) if pages > 1 else shape,
                         dtype=dtype)
    kwargs = {"photometric": "rgb" if channels in (3, 4) else "minisblack",
              "byteorder": draw(st.sampled_from(["<", ">"])),
              "compression": draw(st.sampled_from([None, "zlib"]))}
    if channels > 1:
        kwargs["planarconfig"] = planar
    return tiff_bytes(array, **kwargs), pages_of(array, channels, planar), dtype


@settings(max_examples=60, deadline=None)
@given(case=tiffs())
def test_every_page_decodes_to_its_stored_samples(case):
    data, pages, dtype = case
    frames = decode_frames(data, "all", "x.tif")
    assert len(frames) == len(pages)
    for frame, page in zip(frames, pages):
        assert frame.dtype == np.dtype(dtype) and frame.dtype.isnative
        np.testing.assert_array_equal(frame, page)


@settings(max_examples=30, deadline=None)
@given(case=tiffs())
def test_rgb_and_luma_modes_of_tiffs_follow_the_other_images(case):
    from streamnorm.sources import _luma16

    data, pages, _dtype = case
    c = pages[0].shape[2]
    if c > 4:
        with pytest.raises(BadRecordError, match=r"6 channels; image_mode='RGB' .* "
                                                 r"image_mode='all' to keep every channel"):
            decode_frames(data, "RGB", "x.tif")
        return
    rgb = decode_frames(data, "RGB", "x.tif")
    luma = decode_frames(data, "L", "x.tif")
    for page, r, y in zip(pages, rgb, luma):
        expected = np.repeat(page[:, :, :1], 3, axis=2) if c == 1 else page[:, :, :3]
        np.testing.assert_array_equal(r, expected)
        np.testing.assert_array_equal(y, page[:, :, :1] if c == 1 else _luma16(page[:, :, :3]))


def test_a_stack_is_refused_by_decode_image_which_returns_one_image():
    data = tiff_bytes(np.zeros((2, 3, 4), np.uint16), photometric="minisblack")
    with pytest.raises(BadRecordError, match=r"x\.tif: .*TIFF file with 2 pages; decode_frames"):
        decode_image(data, "RGB", "x.tif")


def test_floating_point_tiff_is_refused_not_clipped():
    data = tiff_bytes(np.zeros((3, 4), np.float32))
    with pytest.raises(BadRecordError, match=r"x\.tif: cannot decode image \(TIFF with 32-bit "
                                             r"float32 samples.*\.npy"):
        decode_image(data, "RGB", "x.tif")


def write_stacks(folder: Path, rng: np.random.Generator, n: int = 4, channels: int = 3,
                 dtype=np.uint16) -> list[np.ndarray]:
    """``n`` multi-page TIFFs (1 to 3 pages of 6x5 pixels); returns every page, in file order."""
    folder.mkdir(parents=True, exist_ok=True)
    pages = []
    for k in range(n):
        stack = rng.integers(0, np.iinfo(dtype).max + 1, (1 + k % 3, 6, 5, channels), dtype=dtype)
        photometric = "rgb" if channels in (3, 4) else "minisblack"
        tifffile.imwrite(folder / f"s{k}.tif", stack, photometric=photometric,
                         planarconfig="contig")
        pages.extend(stack)
    return pages


def exact_mean(pages: list[np.ndarray]) -> list[float]:
    """Per-channel mean from Python integers."""
    flat = np.concatenate([p.reshape(-1, p.shape[2]) for p in pages])
    return [sum(int(v) for v in flat[:, c]) / len(flat) for c in range(flat.shape[1])]


@pytest.mark.parametrize("engine_name, workers", [("local", 1), ("local", 2), ("dask", 1)])
def test_stacks_through_the_engines_are_exact_and_resume(tmp_path, monkeypatch, engine_name,
                                                         workers):
    pages = write_stacks(tmp_path / "data", np.random.default_rng(5))
    oracle = sn.compute_stats([p[None] for p in pages], layout="NHWC")
    whole = engine.compute([tmp_path / "data"], images_per_shard=1, engine=engine_name,
                           workers=workers)
    assert whole.rows == len(pages) and whole.source.unit == "images"
    assert whole.stats.dtype == "uint16" and whole.stats.equals(oracle)
    assert whole.stats.mean.tolist() == exact_mean(pages)

    original = engine.Checkpoint.record
    calls = []

    def record_then_ctrl_c(self, result):
        original(self, result)
        calls.append(result.shard_id)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.Checkpoint, "record", record_then_ctrl_c)
    with pytest.raises(engine.Interrupted):
        engine.compute([tmp_path / "data"], images_per_shard=1, workers=1,
                       checkpoint=tmp_path / "ck")
    monkeypatch.setattr(engine.Checkpoint, "record", original)
    resumed = engine.compute([tmp_path / "data"], images_per_shard=1, engine=engine_name,
                             workers=workers, checkpoint=tmp_path / "ck")
    assert resumed.resumed == 2 and resumed.stats.equals(whole.stats)


def test_tiff_stacks_mix_with_pngs_in_one_image_folder(tmp_path):
    from offline_helpers import png_bytes

    rng = np.random.default_rng(6)
    pages = write_stacks(tmp_path / "data", rng, n=2, dtype=np.uint8)
    png = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    (tmp_path / "data" / "p.png").write_bytes(png_bytes(png))
    run = engine.compute([tmp_path / "data"], workers=1)
    assert run.source.kind == "image" and run.rows == len(pages) + 1
    assert run.stats.equals(sn.compute_stats([p[None] for p in [png, *pages]], layout="NHWC"))


def test_cli_keeps_every_channel_of_multispectral_tiffs(tmp_path):
    pages = write_stacks(tmp_path / "data", np.random.default_rng(7), channels=6)
    res = run_cli("compute", str(tmp_path / "data"), "--store", str(tmp_path / "s"), "--split",
                  "train", "--image-mode", "all", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert f"{len(pages)} images" in res.stdout
    stats = sn.load_stats(tmp_path / "s", "train")
    assert stats.n_features == 6 and stats.dtype == "uint16"
    assert stats.equals(sn.compute_stats([p[None] for p in pages], layout="NHWC"))

    res = run_cli("compute", str(tmp_path / "data"), "--store", str(tmp_path / "s"), "--split",
                  "rgb", "--no-progress")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "6 channels" in res.stderr
    assert "--image-mode all" in res.stderr


def test_images_of_different_channel_counts_are_refused_under_all(tmp_path):
    rng = np.random.default_rng(8)
    write_stacks(tmp_path / "data" / "a", rng, n=1, channels=3)
    write_stacks(tmp_path / "data" / "b", rng, n=1, channels=6)
    with pytest.raises(SourceError, match=r"the images differ in channel count: .*s0\.tif.* has 3"
                                          r", .*s0\.tif.* has 6"):
        engine.compute([tmp_path / "data"], image_mode="all", workers=1)
    with pytest.raises(SourceError, match=r"the images differ in channel count"):
        engine.compute([tmp_path / "data"], image_mode="all", images_per_shard=1, workers=1)


def test_tiff_stacks_in_a_parquet_image_column_are_one_image_per_page(tmp_path):
    rng = np.random.default_rng(9)
    stacks = [rng.integers(0, 65536, (2, 4, 4, 3), dtype=np.uint16) for _ in range(3)]
    column = [tiff_bytes(s, photometric="rgb") for s in stacks]
    column[1] = b"II*\x00garbage"
    pq.write_table(pa.table({"image": column}), tmp_path / "t.parquet")
    with pytest.raises(BadRecordError, match=r"t\.parquet row 1: cannot decode image \(TIFF"):
        engine.compute([tmp_path / "t.parquet"], image_column="image", workers=1)
    run = engine.compute([tmp_path / "t.parquet"], image_column="image", workers=1, skip_bad=True)
    kept = [p for i in (0, 2) for p in stacks[i]]
    assert run.rows == 4 and [w for w, _ in run.skipped] == [f"{tmp_path}/t.parquet row 1"]
    assert run.stats.equals(sn.compute_stats([p[None] for p in kept], layout="NHWC"))
    assert open_source([tmp_path / "t.parquet"], image_column="image").unit == "images"


def test_without_tifffile_the_error_names_the_extra(tmp_path):
    """tifffile missing: Pillow reads what it can exactly; a 16-bit colour TIFF is one line."""
    write_stacks(tmp_path / "data", np.random.default_rng(10), n=1)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "tifffile.py").write_text("raise ImportError('tifffile is not installed here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow), SRC]))
    res = subprocess.run([sys.executable, "-m", "streamnorm", "compute", str(tmp_path / "data"),
                          "--store", str(tmp_path / "s"), "--split", "train", "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "s0.tif" in res.stderr
    assert "needs tifffile, which is not installed: pip install 'streamnorm[tiff]'" in res.stderr


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "I;16"])
def test_single_pages_pillow_reads_keep_their_values(mode):
    """LZW pages (no imagecodecs needed) and palette pages decode as Pillow reads them."""
    from PIL import Image

    rng = np.random.default_rng(11)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (5, 6), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, "TIFF", compression="tiff_lzw")
    out = decode_image(buf.getvalue(), "RGB", "x.tif")
    if mode == "I;16":
        expected = np.repeat(np.asarray(im)[:, :, None], 3, axis=2)
    else:
        expected = np.asarray(im.convert("RGB"))
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_single_multispectral_page_is_refused_under_rgb_not_handed_to_pillow(dtype):
    data = tiff_bytes(np.zeros((2, 2, 6), dtype), photometric="minisblack", planarconfig="contig")
    with pytest.raises(BadRecordError, match=r"x\.tif: cannot decode image \(6 channels"):
        decode_image(data, "RGB", "x.tif")
    assert decode_image(data, "all", "x.tif").shape == (2, 2, 6)
