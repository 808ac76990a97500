"""Legacy IterDataPipe functional forms: .collect_stats() and .normalize()."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.datapipes.iter import IterableWrapper

import streamnorm as sn
import streamnorm.datapipes  # registers .collect_stats() and .normalize()
from streamnorm.errors import StreamnormError


def samples(n: int = 20):
    rng = np.random.default_rng(11)
    return [(rng.integers(0, 256, (3, 4, 4), dtype=np.uint8), i) for i in range(n)]


def test_import_streamnorm_does_not_register():
    code = ("import streamnorm, torch.utils.data.datapipes.datapipe as d; "
            "print('collect_stats' in d.IterDataPipe.functions, "
            "'normalize' in d.IterDataPipe.functions)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]


def test_collect_stats_then_normalize():
    items = samples()
    acc = sn.StatsAccumulator(layout="CHW", histogram=True)
    dp = IterableWrapper(items).collect_stats(acc, key=0)
    assert len(dp) == 20
    passed = list(dp)
    assert [i for _, i in passed] == list(range(20))
    expected = sn.compute_stats([x for x, _ in items], layout="CHW", histogram=True)
    assert acc.result().equals(expected)

    norm = sn.Normalizer.from_stats(acc.result(), "robust")
    out = list(IterableWrapper(items).normalize(norm, key=0, dtype=torch.float16))
    for (y, i), (x, j) in zip(out, items):
        assert i == j and y.dtype == np.float16
        np.testing.assert_array_equal(y, norm(x, dtype=np.float16))


def test_normalize_in_dataloader_workers():
    items = [(torch.from_numpy(x), i) for x, i in samples()]
    norm = sn.Normalizer.from_range(0, 255)
    dp = IterableWrapper(items).sharding_filter().normalize(norm, key=0)
    loader = DataLoader(dp, batch_size=5, num_workers=2)
    got = sorted((int(i), x) for xs, idx in loader for x, i in zip(xs, idx))
    assert [i for i, _ in got] == list(range(20))
    for i, x in got:
        torch.testing.assert_close(x, items[i][0].float() / 255)


def test_collect_stats_refuses_workers(monkeypatch):
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    dp = IterableWrapper(samples(2)).collect_stats(sn.StatsAccumulator(layout="CHW"), key=0)
    with pytest.raises(StreamnormError, match="DataLoader worker"):
        list(dp)


def test_argument_checks():
    dp = IterableWrapper([])
    with pytest.raises(StreamnormError, match="StatsAccumulator"):
        dp.collect_stats(None)
    with pytest.raises(StreamnormError, match="Normalizer"):
        dp.normalize("zscore")
    with pytest.raises(StreamnormError, match="key must be"):
        dp.normalize(sn.Normalizer.from_range(0, 1), key=[0])
    with pytest.raises(StreamnormError, match="IterDataPipe"):
        sn.datapipes.NormalizerIterDataPipe([1, 2], sn.Normalizer.from_range(0, 1))
