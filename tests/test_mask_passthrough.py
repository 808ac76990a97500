"""Masks and ignore_value through compute_stats, CollectStats, DataPipes, the engine and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchdata.nodes import IterableWrapper, Loader

import streamnorm as sn
import streamnorm.datapipes  # noqa: F401  (registers .collect_stats)
from streamnorm import engine
from streamnorm.cli import main


def padded_batches(n_batches: int = 4):
    """(images, labels, masks) batches of variable-size images padded to 6x6 (padding value 255)."""
    rng = np.random.default_rng(0)
    out = []
    for b in range(n_batches):
        images = np.full((3, 2, 6, 6), 255, np.uint8)
        masks = np.zeros((3, 1, 6, 6), bool)
        for i in range(3):
            h, w = 2 + (b + i) % 5, 3 + (b * i) % 4
            images[i, :, :h, :w] = rng.integers(0, 200, (2, h, w))
            masks[i, :, :h, :w] = True
        out.append((images, np.zeros(3), masks))
    return out


def oracle(batches) -> sn.Stats:
    """The statistics of the valid pixels alone, computed without any mask."""
    per_channel = [np.concatenate([img[:, c][m[:, 0]] for img, _, m in batches]) for c in range(2)]
    return sn.compute_stats([np.stack(per_channel, axis=1)], layout="NF", histogram=True)


def same_values(stats: sn.Stats, ref: sn.Stats) -> None:
    assert stats.count.tolist() == ref.count.tolist()
    assert stats.int_sum == ref.int_sum and stats.int_sumsq == ref.int_sumsq
    assert np.array_equal(stats.histogram, ref.histogram)
    assert stats.min.tolist() == ref.min.tolist() and stats.max.tolist() == ref.max.tolist()


def test_compute_stats_takes_mask_key_from_tuple_and_dict_batches():
    batches = padded_batches()
    ref = oracle(batches)
    s = sn.compute_stats(batches, layout="NCHW", key=0, mask_key=2, histogram=True)
    same_values(s, ref)
    total = sum(img[:, 0].size for img, _, _ in batches)
    assert s.masked_count.tolist() == [total - int(ref.count[0])] * 2
    dicts = [{"image": img, "mask": m} for img, _, m in batches]
    assert sn.compute_stats(dicts, layout="NCHW", key="image", mask_key="mask", histogram=True).equals(s)


def test_compute_stats_ignore_value_gives_the_same_as_the_padding_mask():
    batches = padded_batches()
    by_value = sn.compute_stats(batches, layout="NCHW", key=0, ignore_value=255, histogram=True)
    same_values(by_value, oracle(batches))  # (the valid pixels are < 200: 255 is only padding)


@pytest.mark.parametrize("key, mask_key, match", [
    (None, 1, "key= must pick the data"),
    (0, 0, "key and mask_key are both 0"),
    (0, 1.5, "mask_key must be an int"),
])
def test_bad_mask_keys_are_refused_before_reading(key, mask_key, match):
    with pytest.raises(sn.StreamnormError, match=match):
        sn.compute_stats(padded_batches(1), layout="NCHW", key=key, mask_key=mask_key)
    with pytest.raises(sn.StreamnormError, match=match):
        sn.nodes.CollectStats(IterableWrapper([]), sn.StatsAccumulator(), key=key, mask_key=mask_key)


def test_collect_stats_node_with_mask_key_restores_exactly_once():
    batches = padded_batches()
    acc = sn.StatsAccumulator("NCHW", histogram=True)
    loader = Loader(sn.nodes.CollectStats(IterableWrapper(batches), acc, key=0, mask_key=2))
    it = iter(loader)
    next(it)
    next(it)
    state = loader.state_dict()
    acc2 = sn.StatsAccumulator("NCHW", histogram=True)
    fresh = Loader(sn.nodes.CollectStats(IterableWrapper(batches), acc2, key=0, mask_key=2))
    fresh.load_state_dict(state)
    list(fresh)
    same_values(acc2.result(), oracle(batches))
    assert acc2.result().masked_count.tolist() == sn.compute_stats(
        batches, layout="NCHW", key=0, mask_key=2).masked_count.tolist()


def test_datapipe_collect_stats_with_mask_key():
    from torch.utils.data.datapipes.iter import IterableWrapper as Pipe

    batches = padded_batches()
    acc = sn.StatsAccumulator("NCHW", histogram=True)
    items = list(Pipe(batches).collect_stats(acc, key=0, mask_key=2))
    assert len(items) == len(batches)
    same_values(acc.result(), oracle(batches))


def nodata_table(path) -> np.ndarray:
    x = (np.arange(60, dtype=np.int64).reshape(30, 2) * 7 % 50).astype(np.int32)
    x[::4, 0] = -9999
    x[::5, 1] = -9999
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1]}), path)
    return x


def test_engine_compute_ignore_value_on_parquet_and_npy(tmp_path):
    x = nodata_table(tmp_path / "t.parquet")
    np.save(tmp_path / "x.npy", x)
    for src, layout in ((tmp_path / "t.parquet", None), (tmp_path / "x.npy", "NF")):
        run = engine.compute(str(src), layout=layout, ignore_value=-9999, workers=1)
        s = run.stats
        assert s.masked_count.tolist() == [8, 6], src
        for f in range(2):
            kept = x[:, f][x[:, f] != -9999]
            assert s.count[f] == kept.size and s.int_sum[f] == int(kept.sum()) and s.min[f] == kept.min()


def test_cli_ignore_value_end_to_end_and_show_lists_masked_count(tmp_path, capsys):
    x = nodata_table(tmp_path / "t.parquet")
    store = str(tmp_path / "store")
    code = main(["compute", str(tmp_path / "t.parquet"), "--store", store, "--split", "train",
                 "--ignore-value", "-9999", "--no-progress"])
    capsys.readouterr()
    assert code == 0
    s = sn.StatsStore(store).load("train")
    assert s.masked_count.tolist() == [8, 6]
    assert s.mean[0] == x[:, 0][x[:, 0] != -9999].mean()
    assert main(["show", store, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["train"]["features"]
    assert [r["masked_count"] for r in rows] == [8, 6]
    assert main(["show", store]) == 0
    table = capsys.readouterr().out
    assert "masked_count" in table.splitlines()[1]
    assert main(["show", store, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(",masked_count")


def test_cli_refuses_nan_or_text_as_ignore_value(tmp_path, capsys):
    nodata_table(tmp_path / "t.parquet")
    for bad, match in (("nan", "NaN equals no value"), ("abc", "expected a number")):
        with pytest.raises(SystemExit) as info:
            main(["compute", str(tmp_path / "t.parquet"), "--store", str(tmp_path / "s"), "--split", "t",
                  "--ignore-value", bad])
        assert info.value.code == 2 and match in capsys.readouterr().err
