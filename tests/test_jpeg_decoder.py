"""JPEGs by simplejpeg (extra ``jpeg``) give Pillow's pixels; the decoder is stored and shown."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamnorm import StatsStore, engine
from streamnorm.cli import main
from streamnorm.sources import BadRecordError, _jpeg, decode_image
from streamnorm.sources._jpeg import DECODER_ENV, image_decoder

PHOTOS = sorted((Path(__file__).parent / "data" / "photos").glob("*.png"))
FIXTURES = Path(__file__).parent / "fixtures"


def _photo(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _encode(image: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", **options)
    return buf.getvalue()


def _pillow(data: bytes, mode: str, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setenv(DECODER_ENV, "pillow")
        return decode_image(data, mode)


CONFIGS = [
    dict(quality=q, subsampling=s, progressive=p)
    for q in (75, 90, 95) for s in (0, 1, 2) for p in (False, True)
]


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.stem)
@pytest.mark.parametrize("options", CONFIGS, ids=lambda o: "q{quality}-ss{subsampling}-p{progressive:d}".format(**o))
def test_simplejpeg_gives_pillows_pixels(photo, options, monkeypatch):
    assert _jpeg.simplejpeg_module() is not None  # [dev] installs the extra
    image = _photo(photo)
    for source in (image, image.convert("L")):
        data = _encode(source, **options)
        fast = _jpeg.decode_jpeg(data, None)
        assert fast is not None and fast.shape[2] == (3 if source.mode == "RGB" else 1)
        for mode in ("RGB", "L", "all"):
            expected = _pillow(data, mode, monkeypatch)
            got = decode_image(data, mode)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected, err_msg=f"{source.mode} -> {mode}")


def test_other_jpegs_and_broken_ones_go_to_pillow(monkeypatch):
    image = _photo(PHOTOS[0])
    cmyk = _encode(image.convert("CMYK"), quality=90)
    assert _jpeg.decode_jpeg(cmyk, None) is None
    np.testing.assert_array_equal(decode_image(cmyk), np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB")))
    # beyond Pillow's warning size Pillow decides (warns or refuses)
    assert _jpeg.decode_jpeg(_encode(image), 2 * 180 * 180 - 2) is None
    truncated = _encode(image, quality=90)[:3000]
    assert _jpeg.decode_jpeg(truncated, None) is None
    with pytest.raises(BadRecordError, match="where.jpg: cannot decode image"):
        decode_image(truncated, where="where.jpg")
    monkeypatch.setenv(DECODER_ENV, "pillow")
    assert _jpeg.decode_jpeg(_encode(image), None) is None


def test_decoder_is_named():
    import PIL
    import simplejpeg

    assert image_decoder().startswith(f"simplejpeg {simplejpeg.__version__} (JPEG), Pillow {PIL.__version__}")


def test_decoder_is_stored_and_shown(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "jpegs"
    folder.mkdir()
    for k, photo in enumerate(PHOTOS):
        (folder / f"{k}.jpg").write_bytes(_encode(_photo(photo), quality=90))
    run = engine.compute([folder], histogram=True)
    assert run.summary()["decoder"] == image_decoder()
    root = str(tmp_path / "stats")
    monkeypatch.setenv(DECODER_ENV, "pillow")
    assert main(["compute", str(folder), "--store", root, "--split", "pillow", "--histogram",
                 "--no-progress"]) == 0
    monkeypatch.delenv(DECODER_ENV)
    assert main(["compute", str(folder), "--store", root, "--split", "fast", "--histogram",
                 "--no-progress"]) == 0
    store = StatsStore(root)
    pillow = store.metadata("pillow")["source"]["decoder"]
    assert pillow.startswith("Pillow ") and "simplejpeg" not in pillow
    assert store.metadata("fast")["source"]["decoder"] == image_decoder()
    # the same pixels, so the same statistics, quantiles included
    assert store.load("fast").equals(store.load("pillow"))
    capsys.readouterr()
    assert main(["show", root]) == 0
    out = capsys.readouterr().out
    assert f"split fast: 3 features, layout NHWC, dtype uint8, decoded by {image_decoder()}" in out
    assert f"split pillow: 3 features, layout NHWC, dtype uint8, decoded by {pillow}" in out
    assert main(["show", root, "--split", "fast", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["fast"]["decoder"] == image_decoder()


def test_files_without_a_decoder_still_load_and_show(tmp_path, capsys):
    assert main(["show", str(FIXTURES / "store-v2")]) == 0
    out = capsys.readouterr().out
    assert "split " in out and "decoded by" not in out
    table = tmp_path / "t.npy"
    np.save(table, np.arange(12, dtype=np.float32).reshape(4, 3))
    assert "decoder" not in engine.compute([table], layout="NF").summary()
