"""torchdata.nodes stages: CollectStats exactly-once across checkpoints, DeviceNormalize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchdata.nodes import Batcher, IterableWrapper, Loader, Prefetcher

import streamnorm as sn
from streamnorm.errors import StreamnormError
from streamnorm.nodes import CollectStats, DeviceNormalize

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
N_BATCHES = 12


def make_batches(dtype) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    if dtype == np.uint8:
        return [rng.integers(0, 256, (3, 2, 4, 4), dtype=np.uint8) for _ in range(N_BATCHES)]
    return [(rng.standard_normal((3, 2, 4, 4)) * 5 + 100).astype(dtype) for _ in range(N_BATCHES)]


def one_pass(batches) -> sn.Stats:
    acc = sn.StatsAccumulator(histogram=batches[0].dtype == np.uint8)
    for b in batches:
        acc.update(b)
    return acc.result()


def upstream_prefetch(batches, acc):
    return CollectStats(Prefetcher(IterableWrapper(batches), prefetch_factor=3), acc)


def downstream_prefetch(batches, acc):
    return Prefetcher(CollectStats(IterableWrapper(batches), acc), prefetch_factor=3)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("build", [upstream_prefetch, downstream_prefetch])
@pytest.mark.parametrize("stop", [0, 1, 5, N_BATCHES - 1, N_BATCHES])
def test_exactly_once_across_checkpoints(dtype, build, stop):
    batches = make_batches(dtype)
    expected = one_pass(batches)
    histogram = dtype == np.uint8

    acc = sn.StatsAccumulator(histogram=histogram)
    loader = Loader(build(batches, acc))
    it = iter(loader)
    for _ in range(stop):
        next(it)
    state = loader.state_dict()

    fresh_acc = sn.StatsAccumulator(histogram=histogram)
    fresh = Loader(build(batches, fresh_acc))
    fresh.load_state_dict(state)
    rest = list(fresh)
    if stop < N_BATCHES:
        assert len(rest) == N_BATCHES - stop
        for got, want in zip(rest, batches[stop:]):
            np.testing.assert_array_equal(got, want)
        assert fresh_acc.result().equals(expected)  # bit for bit, floats included
    # the interrupted pipeline, run on, also ends with every batch counted once
    list(it)
    assert acc.result().equals(expected)


def test_restore_loads_into_the_same_accumulator_object():
    batches = make_batches(np.uint8)
    acc = sn.StatsAccumulator(histogram=True)
    node = CollectStats(IterableWrapper(batches), acc)
    for _ in range(4):
        next(node)
    state = node.state_dict()
    for _ in range(3):
        next(node)
    node.reset(state)  # roll back to the checkpoint
    assert node.accumulator is acc
    assert acc.result().equals(one_pass(batches[:4]))
    rest = list(node)
    assert len(rest) == N_BATCHES - 4
    assert acc.result().equals(one_pass(batches))
    assert node.completed_passes == 1
    assert set(state) == {CollectStats.SOURCE_KEY, CollectStats.ACCUMULATOR_KEY,
                          CollectStats.PASSES_KEY, CollectStats.ENDED_KEY}


def test_key_with_batcher_and_dict_items():
    items = [{"image": np.full((2, 2), i, np.uint8), "label": i} for i in range(10)]
    acc = sn.StatsAccumulator(layout="HW")
    node = CollectStats(IterableWrapper(items), acc, key="image")
    out = list(Loader(Batcher(node, batch_size=3, drop_last=False)))
    assert [len(b) for b in out] == [3, 3, 3, 1]
    assert acc.result().count.tolist() == [40]
    assert acc.result().mean.tolist() == [4.5]


def test_max_passes_collects_one_epoch_only():
    batches = make_batches(np.uint8)
    acc = sn.StatsAccumulator(histogram=True)
    loader = Loader(CollectStats(IterableWrapper(batches), acc, max_passes=1))
    for _ in range(3):
        assert len(list(loader)) == N_BATCHES
    assert acc.result().equals(one_pass(batches))
    state = loader.state_dict()
    assert state["root"][CollectStats.PASSES_KEY] >= 1
    acc_all = sn.StatsAccumulator(histogram=True)
    loader = Loader(CollectStats(IterableWrapper(batches), acc_all))
    for _ in range(2):
        list(loader)
    assert acc_all.result().count.tolist() == [2 * c for c in one_pass(batches).count]


def test_collect_stats_refuses_dataloader_workers(monkeypatch):
    # what a DataLoader worker process reports (a real worker costs seconds of teardown)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    node = CollectStats(IterableWrapper([np.zeros((2, 3), np.uint8)]),
                        sn.StatsAccumulator(layout="NF"))
    with pytest.raises(StreamnormError, match="main process"):
        next(node)


def test_collect_stats_argument_checks():
    src = IterableWrapper([])
    with pytest.raises(StreamnormError, match="BaseNode"):
        CollectStats([1, 2], sn.StatsAccumulator())
    with pytest.raises(StreamnormError, match="StatsAccumulator"):
        CollectStats(src, object())
    with pytest.raises(StreamnormError, match="max_passes"):
        CollectStats(src, sn.StatsAccumulator(), max_passes=0)
    with pytest.raises(StreamnormError, match="key must be"):
        CollectStats(src, sn.StatsAccumulator(), key=2.0)
    node = CollectStats(src, sn.StatsAccumulator())
    with pytest.raises(StreamnormError, match="not a CollectStats state"):
        node.reset({"source": {}})
    good = node.state_dict()
    for bad in ({**good, CollectStats.ENDED_KEY: "yes"}, {**good, CollectStats.PASSES_KEY: -1},
                [1, 2]):
        with pytest.raises(StreamnormError, match="not a CollectStats state"):
            node.reset(bad)


# -- DeviceNormalize --------------------------------------------------------------
def image_batches():
    gen = torch.Generator().manual_seed(3)
    return [(torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=gen), i)
            for i in range(9)]


def test_device_normalize_cpu_checkpoint_resume():
    batches = image_batches()
    norm = sn.Normalizer.from_mean_std([100.0, 110.0, 120.0], [50.0, 55.0, 60.0])

    def build():
        return Loader(DeviceNormalize(Prefetcher(IterableWrapper(batches), 2), norm,
                                      device="cpu", key=0, dtype=torch.float16))

    loader = build()
    it = iter(loader)
    head = [next(it) for _ in range(4)]
    state = loader.state_dict()
    fresh = build()
    fresh.load_state_dict(state)
    tail = list(fresh)
    got = head + tail
    assert [i for _, i in got] == list(range(9))
    for (x, i), (raw, _) in zip(got, batches):
        assert x.dtype == torch.float16
        torch.testing.assert_close(x, norm(raw, torch.float16), rtol=0, atol=0)


def test_device_normalize_argument_checks():
    norm = sn.Normalizer.from_range(0, 255)
    with pytest.raises(StreamnormError, match="BaseNode"):
        DeviceNormalize([1], norm, "cpu")
    with pytest.raises(StreamnormError, match="Normalizer"):
        DeviceNormalize(IterableWrapper([]), "minmax", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(StreamnormError, match="CUDA is not available"):
            DeviceNormalize(IterableWrapper([]), norm, "cuda")
    node = DeviceNormalize(IterableWrapper([]), norm, "cpu")
    assert node.stream is None and node.device == torch.device("cpu")


@pytest.mark.cuda
@cuda
def test_device_normalize_cuda_look_ahead_state():
    from torchdata.nodes import PinMemory

    batches = image_batches()
    norm = sn.Normalizer.from_mean_std([100.0, 110.0, 120.0], [50.0, 55.0, 60.0])
    device = torch.device("cuda", torch.cuda.device_count() - 1)

    def build():
        return Loader(DeviceNormalize(PinMemory(IterableWrapper(batches)), norm, device, key=0))

    loader = build()
    it = iter(loader)
    head = [next(it) for _ in range(5)]
    state = loader.state_dict()
    fresh = build()
    fresh.load_state_dict(state)
    got = head + list(fresh)
    assert [i for _, i in got] == list(range(9))
    for (x, _), (raw, _) in zip(got, batches):
        assert x.device == device
        torch.testing.assert_close(x.cpu(), norm(raw), rtol=1e-6, atol=1e-6)
