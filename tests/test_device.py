"""DeviceLoader: every batch once, in order, normalized on the device; CPU and CUDA."""

from __future__ import annotations

import threading
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import streamnorm as sn
from streamnorm._prefetch import Prefetch
from streamnorm.device import move_to_device
from streamnorm.errors import StreamnormError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

N, C, H, W = 40, 3, 8, 8


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=gen)


@pytest.fixture(scope="module")
def norm(images) -> sn.Normalizer:
    return sn.Normalizer.from_stats(sn.compute_stats([images.numpy()]))


class DictImages(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": i, "meta": {"mask": self.images[i, :1]}}


def test_dataloader_with_workers_every_batch_once_in_order(images, norm):
    loader = DataLoader(TensorDataset(images, torch.arange(N)), batch_size=6, num_workers=2)
    dl = sn.DeviceLoader(loader, norm, device="cpu", key=0)
    assert len(dl) == len(loader) == 7
    seen = []
    for epoch in range(2):
        seen.clear()
        for x, y in dl:
            assert x.dtype == torch.float32 and x.device.type == "cpu"
            torch.testing.assert_close(x, norm(images[y]), rtol=0, atol=0)
            seen.extend(y.tolist())
        assert seen == list(range(N))


def test_compute_stats_over_workers_equals_one_pass(images):
    # the documented pattern: workers load, the main process accumulates
    loader = DataLoader(TensorDataset(images, torch.arange(N)), batch_size=7, num_workers=2)
    stats = sn.compute_stats(loader, layout="NCHW", key=0, histogram=True)
    assert stats.equals(sn.compute_stats([images.numpy()], histogram=True))


def test_dict_batches_nested_and_several_normalizers(images, norm):
    loader = DataLoader(DictImages(images), batch_size=8, num_workers=2)
    dl = sn.DeviceLoader(loader, {"image": norm, "label": sn.Normalizer.from_range(0, 100)},
                         device="cpu", dtype=torch.float16)
    for batch in dl:
        idx = (batch["label"].double() * 100).round().long()
        torch.testing.assert_close(batch["image"], norm(images[idx], torch.float16))
        assert batch["label"].dtype == torch.float16
        assert batch["meta"]["mask"].dtype == torch.uint8  # moved, not normalized


def test_plain_iterables_numpy_and_named_tuples(images, norm):
    Pair = namedtuple("Pair", "x y")
    batches = [Pair(images[i : i + 5].numpy(), np.arange(i, i + 5)) for i in range(0, N, 5)]
    out = list(sn.DeviceLoader(batches, norm, device="cpu", key=0))
    assert len(out) == len(batches)
    for i, b in enumerate(out):
        assert isinstance(b, Pair) and isinstance(b.x, torch.Tensor)
        torch.testing.assert_close(b.x, norm(images[5 * i : 5 * i + 5]))
        assert b.y.tolist() == list(range(5 * i, 5 * i + 5))
    bare = list(sn.DeviceLoader([images[:4]], norm, device="cpu"))
    torch.testing.assert_close(bare[0], norm(images[:4]))


def test_channels_last_batches_stay_channels_last(images, norm):
    batches = [images[:8].contiguous(memory_format=torch.channels_last)]
    (x,) = list(sn.DeviceLoader(batches, norm, device="cpu"))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_eager_argument_checks(norm):
    with pytest.raises(StreamnormError, match="iterable of batches"):
        sn.DeviceLoader(42, norm)
    with pytest.raises(StreamnormError, match="key must be"):
        sn.DeviceLoader([], norm, key=1.5)
    with pytest.raises(StreamnormError, match="leave key=None"):
        sn.DeviceLoader([], {"image": norm}, key="image")
    with pytest.raises(StreamnormError, match="not a streamnorm.Normalizer"):
        sn.DeviceLoader([], {"image": "zscore"})
    with pytest.raises(StreamnormError, match="Normalizer or a dict"):
        sn.DeviceLoader([], None)
    with pytest.raises(StreamnormError, match="empty dict"):
        sn.DeviceLoader([], {})
    with pytest.raises(StreamnormError, match="must be floating"):
        sn.DeviceLoader([], norm, dtype=torch.int32)
    if not torch.cuda.is_available():
        with pytest.raises(StreamnormError, match="CUDA is not available"):
            sn.DeviceLoader([], norm, device="cuda:0")
        assert sn.DeviceLoader([], norm).device == torch.device("cpu")


def test_bad_key_raises_per_batch_clearly(images, norm):
    dl = sn.DeviceLoader([(images[:2], 0)], norm, device="cpu", key="image")
    with pytest.raises(StreamnormError, match="does not fit the batch"):
        next(iter(dl))


def test_len_and_attributes_pass_through(images, norm):
    loader = DataLoader(TensorDataset(images), batch_size=16)
    dl = sn.DeviceLoader(loader, norm, device="cpu", key=0)
    assert len(dl) == 3 and dl.dataset is loader.dataset and dl.batch_size == 16
    assert dl.stream is None
    with pytest.raises(TypeError):
        len(sn.DeviceLoader(iter([]), norm, device="cpu"))


def test_move_to_device_keeps_structure():
    batch = {"a": (torch.zeros(2), [np.ones(3, dtype=">f4"), "text"]), "b": 3}
    out = move_to_device(batch, "cpu")
    assert isinstance(out["a"], tuple) and out["a"][1][1] == "text" and out["b"] == 3
    assert out["a"][1][0].dtype == torch.float32 and out["a"][1][0].tolist() == [1, 1, 1]


def test_background_iterator_order_errors_and_close():
    before = threading.active_count()
    got = list(Prefetch(iter(range(50)), prepare=lambda v: v * 2))
    assert got == [2 * v for v in range(50)]

    def broken():
        yield 1
        raise ValueError("source broke at item 2")

    it = iter(Prefetch(broken(), prepare=lambda v: v))
    assert next(it) == 1
    with pytest.raises(ValueError, match="item 2"):
        next(it)
    bg = Prefetch(iter(range(10**6)), prepare=lambda v: v)
    assert next(iter(bg)) == 0
    bg.close()
    assert not bg._thread.is_alive()
    assert threading.active_count() <= before + 1


# -- CUDA ------------------------------------------------------------------------
@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("pin_memory", [False, True])
def test_cuda_device_loader(images, norm, pin_memory):
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    loader = DataLoader(TensorDataset(images, torch.arange(N)), batch_size=6, num_workers=2,
                        pin_memory=pin_memory)
    dl = sn.DeviceLoader(loader, norm, device=device, key=0)
    stream = dl.stream
    assert stream is not None and stream.device == device
    for _ in range(2):
        seen = []
        for x, y in dl:
            assert x.device == device and y.device == device
            y_cpu = y.cpu()
            torch.testing.assert_close(x.cpu(), norm(images[y_cpu]), rtol=1e-6, atol=1e-6)
            seen.extend(y_cpu.tolist())
        assert seen == list(range(N))
    assert dl.stream is stream  # one side stream per DeviceLoader, not per epoch


@pytest.mark.cuda
@cuda
def test_cuda_early_break_stops_pinning_thread(images, norm):
    before = threading.active_count()
    dl = sn.DeviceLoader([images[i : i + 2] for i in range(0, N, 2)], norm, device="cuda")
    for i, _ in enumerate(dl):
        if i == 2:
            break
    torch.cuda.synchronize()
    assert threading.active_count() <= before
