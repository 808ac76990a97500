"""Image files on threads (Pillow releases the GIL) vs processes; stacks of decoded images."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest

import streamnorm as sn
from offline_helpers import write_images
from streamnorm import engine
from streamnorm.sources import BadRecordError, _decode, images, open_source


def _no_processes(*args, **kwargs):
    raise AssertionError("image files of this size must be decoded on threads")


@pytest.fixture()
def large_pngs(tmp_path):
    # 96x96 noise: about 27 KiB per PNG, above the 16 KiB of THREAD_MIN_FILE_BYTES
    write_images(tmp_path, 9, np.random.default_rng(5), size=96)
    return tmp_path


def test_file_size_picks_threads_or_processes(tmp_path, large_pngs):
    write_images(tmp_path / "small", 4, np.random.default_rng(1), size=8)
    assert not open_source([large_pngs]).holds_gil
    assert open_source([tmp_path / "small"]).holds_gil
    # other decoding sources keep their processes
    assert open_source([tmp_path / "small"]).decodes


def test_threads_give_the_statistics_of_inline_and_processes(large_pngs, monkeypatch):
    inline = engine.compute([large_pngs], workers=1, images_per_shard=2, histogram=True)
    with monkeypatch.context() as m:
        m.setattr(cf, "ProcessPoolExecutor", _no_processes)
        threaded = engine.compute([large_pngs], workers=2, images_per_shard=2, histogram=True)
        by_default = engine.compute([large_pngs], images_per_shard=2, histogram=True)
    monkeypatch.setattr(images, "THREAD_MIN_FILE_BYTES", 2**40)
    pooled = engine.compute([large_pngs], workers=2, images_per_shard=2, histogram=True)
    assert threaded.shards == 5 and threaded.rows == 9
    assert threaded.stats.equals(inline.stats)
    assert by_default.stats.equals(inline.stats)
    assert pooled.stats.equals(inline.stats)


def test_bad_image_on_a_thread_is_named_or_skipped(large_pngs, monkeypatch):
    bad = large_pngs / "a" / "0002.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30000)
    monkeypatch.setattr(cf, "ProcessPoolExecutor", _no_processes)
    with pytest.raises(BadRecordError, match="0002.png: cannot decode image"):
        engine.compute([large_pngs], workers=2, images_per_shard=2)
    run = engine.compute([large_pngs], workers=2, images_per_shard=2, skip_bad=True)
    assert run.rows == 8
    assert [where.endswith("0002.png") for where, _ in run.skipped] == [True]


@pytest.mark.parametrize("stack_bytes", [1, 200, 10_000, 8 * 2**20])
def test_stacks_of_mixed_sizes_give_exact_statistics(monkeypatch, stack_bytes):
    # 1 byte: every image alone (no copy); 200: two 5x4 images per stack; more: runs of a size
    monkeypatch.setattr(_decode, "IMAGE_STACK_BYTES", stack_bytes)
    rng = np.random.default_rng(11)
    shapes = [(5, 4), (5, 4), (5, 4), (2, 3), (5, 4), (40, 30), (2, 3), (2, 3)]
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    parts, n = _decode.reduce_images(((f"img{k}", a) for k, a in enumerate(arrays)),
                                     histogram=True, nan_policy="raise")
    values = np.concatenate([a.reshape(-1, 3) for a in arrays])
    expected = sn.compute_stats([values], layout="NF", histogram=True)
    assert n == len(arrays)
    np.testing.assert_array_equal(parts[0].count, expected.count)
    np.testing.assert_array_equal(parts[0].histogram, expected.histogram)
    np.testing.assert_array_equal(parts[0].min, expected.min)
    np.testing.assert_array_equal(parts[0].max, expected.max)
    np.testing.assert_array_equal(parts[0].mean, expected.mean)


@pytest.mark.parametrize("n_feat", [1, 2, 3, 4, 7, 17])
@pytest.mark.parametrize("n_rows", [1, 15, 16, 17, 1001])
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_histograms_counted_in_lanes_are_exact(n_feat, n_rows, dtype):
    rng = np.random.default_rng(n_feat * 1000 + n_rows)
    full = rng.integers(-128 if dtype == "int8" else 0, 128 if dtype == "int8" else 256,
                        (n_rows, 2 * n_feat), dtype=dtype)
    full[: n_rows // 2] = full[0]  # runs of one value, as in flat image areas
    offset = 128 if dtype == "int8" else 0
    for batch in (np.ascontiguousarray(full[:, :n_feat]), full[:, ::2]):  # rows side by side, strided
        hist = sn.compute_stats([batch], layout="NF", histogram=True).histogram
        expected = np.stack([np.bincount(batch[:, f].astype(np.int64) + offset, minlength=256)
                             for f in range(n_feat)])
        np.testing.assert_array_equal(hist, expected)
