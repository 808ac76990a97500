"""16-bit images are read exactly as uint16 (issue 8, item 9).

The oracle is ``offline_helpers.png16_bytes``, a PNG writer written for these
tests with numpy and zlib (all five row filters, Adam7, split IDAT chunks),
independent of the reader in ``streamnorm._png``; it is itself checked
against Pillow (exact for 16-bit gray, the high byte for colour images).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import streamnorm as sn
from offline_helpers import png16_bytes, run_cli
from streamnorm import engine
from streamnorm._png import PngError, decode_png16
from streamnorm.sources import BadRecordError, SourceError, _luma16, decode_image


def expected(image: np.ndarray, mode: str) -> np.ndarray:
    """What decode_image must return for a 16-bit (H, W, C) image."""
    c = image.shape[2]
    if mode == "RGB":
        return np.repeat(image[:, :, :1], 3, axis=2) if c <= 2 else image[:, :, :3]
    if c <= 2:
        return image[:, :, :1]
    r, g, b = (image[:, :, k].astype(np.int64) for k in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint16)[:, :, None]


@st.composite
def images16(draw, max_side=20):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    c = draw(st.sampled_from([1, 2, 3, 4]))
    elements = st.one_of(st.integers(0, 65535), st.sampled_from([0, 1, 255, 256, 65534, 65535]))
    return draw(hnp.arrays(np.uint16, (h, w, c), elements=elements))


@settings(max_examples=150, deadline=None)
@given(image=images16(), filters=st.lists(st.integers(0, 4), min_size=1, max_size=6),
       interlace=st.booleans(), pieces=st.integers(1, 3))
def test_png16_reader_is_exact(image, filters, interlace, pieces):
    data = png16_bytes(image, filters=filters, interlace=interlace, idat_pieces=pieces)
    got = decode_png16(data)
    assert got.dtype == np.uint16 and got.shape == image.shape
    np.testing.assert_array_equal(got, image)
    for mode in ("RGB", "L"):
        out = decode_image(data, mode, "x.png")
        assert out.dtype == np.uint16
        np.testing.assert_array_equal(out, expected(image, mode))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("interlace", [False, True])
def test_the_oracle_writer_agrees_with_pillow(channels, interlace):
    # Pillow keeps 16-bit gray exactly and the high byte of colour samples.
    from PIL import Image

    image = np.random.default_rng(channels).integers(0, 65536, (13, 11, channels), dtype=np.uint16)
    with Image.open(io.BytesIO(png16_bytes(image, interlace=interlace))) as im:
        im.load()
        pil = np.asarray(im)
    high = (image >> 8).astype(np.uint8)
    if channels == 1:
        np.testing.assert_array_equal(pil, image[:, :, 0])
    elif channels == 2:  # Pillow opens 16-bit gray+alpha as RGBA
        np.testing.assert_array_equal(pil[:, :, 0], high[:, :, 0])
        np.testing.assert_array_equal(pil[:, :, 3], high[:, :, 1])
    else:
        np.testing.assert_array_equal(pil, high)


def test_pillow_written_16bit_gray_png_and_tiff():
    from PIL import Image

    gray = np.random.default_rng(1).integers(0, 65536, (9, 7), dtype=np.uint16)
    for fmt in ("PNG", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(gray).save(buf, fmt)
        out = decode_image(buf.getvalue(), "RGB", f"x.{fmt}")
        assert out.dtype == np.uint16
        np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))
        np.testing.assert_array_equal(decode_image(buf.getvalue(), "L")[:, :, 0], gray)


def test_luma_is_pillows_formula():
    from PIL import Image

    rgb = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rgb[0, :8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                  [1, 2, 3], [128, 128, 128], [254, 1, 127]]
    pil = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(_luma16(rgb)[:, :, 0], pil)


def _rgb16_tiff(image: np.ndarray) -> bytes:
    """An uncompressed 16-bit RGB TIFF, written by hand."""
    h, w, _ = image.shape
    pixels = image.astype("<u2").tobytes()
    entries = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, None), (259, 3, 1, 1),
               (262, 3, 1, 2), (273, 4, 1, None), (277, 3, 1, 3), (278, 3, 1, h),
               (279, 4, 1, len(pixels))]
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = 8 + ifd_size
    data_at = bits_at + 6
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        if tag == 258:
            value = bits_at
        if tag == 273:
            value = data_at
        packed = struct.pack("<HI", value, 0)[:4] if typ == 3 and tag != 258 else struct.pack(
            "<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    out += struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + pixels
    return bytes(out)


def test_16bit_colour_tiff_is_read_exactly_through_tifffile():
    # issue 11 (TIFF): what Pillow could only refuse, tifffile reads sample for sample
    image = np.random.default_rng(3).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    out = decode_image(_rgb16_tiff(image), "RGB", "x.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, image)


def test_16bit_colour_tiff_without_tifffile_names_the_extra(monkeypatch):
    from streamnorm.sources import tiff

    monkeypatch.setattr(tiff, "tifffile_module", lambda: None)
    image = np.random.default_rng(3).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    with pytest.raises(BadRecordError, match=r"x\.tif: cannot decode image \(16-bit TIFF.*"
                                             r"needs tifffile, which is not installed: "
                                             r"pip install 'streamnorm\[tiff\]'"):
        decode_image(_rgb16_tiff(image), "RGB", "x.tif")


@pytest.mark.parametrize("damage, reason", [
    (lambda d: d[:-30], "truncated"),
    (lambda d: d[:45] + bytes([d[45] ^ 1]) + d[46:], "CRC mismatch"),
])
def test_damaged_16bit_png_is_a_bad_record(damage, reason):
    data = png16_bytes(np.arange(300, dtype=np.uint16).reshape(10, 10, 3))
    with pytest.raises(BadRecordError, match=reason):
        decode_image(damage(data), "RGB", "x.png")


def test_unknown_filter_type_is_refused():
    image = np.arange(12, dtype=np.uint16).reshape(2, 2, 3)
    raw = b"".join(b"\x07" + row.astype(">u2").tobytes() for row in image.reshape(2, -1))
    good = png16_bytes(image)
    ihdr_end = 8 + 8 + 13 + 4
    idat = zlib.compress(raw)
    chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(
        ">I", zlib.crc32(b"IDAT" + idat))
    data = good[:ihdr_end] + chunk + good[-12:]
    with pytest.raises(PngError, match="unknown filter type 7"):
        decode_png16(data)


# -- through the offline engine and the command line ---------------------------------


def write_16bit_folder(root, rng, n=7, channels=(1, 2, 3, 4)):
    images = []
    for k in range(n):
        c = channels[k % len(channels)]
        shape = (int(rng.integers(1, 12)), int(rng.integers(1, 12)), c)
        image = rng.integers(0, 65536, shape, dtype=np.uint16)
        image.flat[0] = 65535
        folder = root / f"class{k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{k:03d}.png").write_bytes(
            png16_bytes(image, filters=rng.integers(0, 5, 4), interlace=bool(k % 3 == 0)))
        images.append(expected(image, "RGB"))
    return images


def assert_exact(stats: sn.Stats, images: list[np.ndarray]) -> None:
    values = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.int64)
    assert stats.dtype == "uint16" and stats.layout == "NHWC"
    assert stats.count.tolist() == [len(values)] * 3
    assert stats.min.tolist() == values.min(axis=0).tolist()
    assert stats.max.tolist() == values.max(axis=0).tolist()
    sums = values.sum(axis=0)
    assert stats.mean.tolist() == (sums / len(values)).tolist()
    dev = values * len(values) - sums  # exact: n^2 * m2 = sum((n x - S)^2)
    m2_exact = (dev.astype(object) ** 2).sum(axis=0)
    for f in range(3):
        assert stats.m2[f] == pytest.approx(float(m2_exact[f]) / len(values) ** 2, rel=1e-15)


@pytest.mark.parametrize("images_per_shard", [1, 3, 256])
def test_compute_16bit_folder_is_exact(tmp_path, images_per_shard):
    images = write_16bit_folder(tmp_path / "img", np.random.default_rng(images_per_shard))
    run = engine.compute([tmp_path / "img"], images_per_shard=images_per_shard, workers=1)
    assert run.rows == len(images)
    assert_exact(run.stats, images)


def test_cli_compute_16bit_rgb_pngs(tmp_path):
    images = write_16bit_folder(tmp_path / "img", np.random.default_rng(9), channels=(3,))
    res = run_cli("compute", str(tmp_path / "img"), "--store", str(tmp_path / "store"),
                  "--split", "train", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "uint16" in res.stdout
    assert_exact(sn.load_stats(tmp_path / "store", "train"), images)


def test_mixed_8_and_16_bit_images_are_refused(tmp_path):
    from PIL import Image

    folder = tmp_path / "img"
    write_16bit_folder(folder, np.random.default_rng(4), n=2)
    Image.new("RGB", (3, 3), (1, 2, 3)).save(folder / "class0" / "zz-8bit.png")
    # one shard (checked while reading) and one image per shard (checked at the merge)
    for per_shard in (256, 1):
        with pytest.raises(SourceError, match=r"the images mix bit depths: .* is (8|16)-bit, "
                                              r".* is (8|16)-bit"):
            engine.compute([folder], images_per_shard=per_shard, workers=1)
    res = run_cli("compute", str(folder), "--store", str(tmp_path / "store"), "--split", "x",
                  "--no-progress", "--skip-bad")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "zz-8bit.png is 8-bit" in lines[0] and "16-bit" in lines[0]


def test_parquet_image_column_of_16bit_pngs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(11)
    images = [rng.integers(0, 65536, (4, 5, c), dtype=np.uint16) for c in (3, 4, 1)]
    pq.write_table(pa.table({"image": [png16_bytes(im) for im in images]}),
                   tmp_path / "t.parquet")
    run = engine.compute([tmp_path / "t.parquet"], image_column="image", workers=1)
    assert run.rows == 3
    assert_exact(run.stats, [expected(im, "RGB") for im in images])
