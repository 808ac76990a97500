"""merge_across_ranks under NCCL: each rank uses its group's bound GPU (issue 8, item 15).

On the CPU, torch.distributed and the CUDA device queries are replaced by
fakes that record on which device every payload tensor is created; the
``cuda``-marked test runs real NCCL ranks bound with ``device_id`` and no
``torch.cuda.set_device``.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import streamnorm as sn
from streamnorm.distributed import encode_state, merge_across_ranks
from streamnorm.errors import StreamnormError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class FakeGroup:
    def __init__(self, bound_device_id: torch.device | None) -> None:
        self.bound_device_id = bound_device_id


class FakeDist:
    """A one-rank NCCL world on the CPU that records every device a tensor is put on."""

    def __init__(self, monkeypatch, backend: str = "nccl", bound: torch.device | None = None,
                 current: int = 0, cuda_available: bool = True) -> None:
        self.devices: list[torch.device] = []
        self.world = FakeGroup(bound)
        monkeypatch.setattr(dist, "is_available", lambda: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 1)
        monkeypatch.setattr(dist, "all_gather", lambda out, t, group=None: out[0].copy_(t))
        monkeypatch.setattr(dist, "group", type("group", (), {"WORLD": self.world}))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 8 if cuda_available else 0)
        monkeypatch.setattr(torch.cuda, "current_device", self._current(current, cuda_available))
        for name in ("tensor", "zeros", "empty"):
            monkeypatch.setattr(torch, name, self._factory(getattr(torch, name)))
        to = torch.Tensor.to
        monkeypatch.setattr(torch.Tensor, "to", lambda t, *a, **k: self._to(to, t, *a, **k))

    @staticmethod
    def _current(index: int, available: bool):
        def current_device() -> int:
            if not available:
                raise AssertionError("Torch not compiled with CUDA enabled")
            return index
        return current_device

    def _factory(self, make):
        def wrapped(*args, device=None, **kwargs):
            self.devices.append(torch.device(device if device is not None else "cpu"))
            return make(*args, **kwargs)  # created on the CPU here
        return wrapped

    def _to(self, to, t, *args, **kwargs):
        target = kwargs.get("device", args[0] if args else None)
        if isinstance(target, (str, torch.device)):
            self.devices.append(torch.device(target))
            return t  # stays on the CPU here
        return to(t, *args, **kwargs)


def accumulator() -> sn.StatsAccumulator:
    return sn.StatsAccumulator(layout="NF").update(np.arange(12, dtype=np.uint8).reshape(4, 3))


def test_nccl_uses_the_worlds_bound_device_not_the_current_one(monkeypatch):
    # init_process_group("nccl", device_id=cuda:3) without torch.cuda.set_device(3)
    fake = FakeDist(monkeypatch, bound=torch.device("cuda", 3), current=0)
    merged = merge_across_ranks(accumulator())
    assert merged.result().equals(accumulator().result())
    assert fake.devices and set(fake.devices) == {torch.device("cuda", 3)}


def test_nccl_uses_a_subgroups_own_bound_device(monkeypatch):
    fake = FakeDist(monkeypatch, bound=torch.device("cuda", 3), current=0)
    merge_across_ranks(accumulator().result(), group=FakeGroup(torch.device("cuda", 5)))
    assert set(fake.devices) == {torch.device("cuda", 5)}


@pytest.mark.parametrize("current", [0, 2])
def test_nccl_without_a_bound_device_uses_the_current_device(monkeypatch, current):
    fake = FakeDist(monkeypatch, bound=None, current=current)
    merge_across_ranks(accumulator())
    assert set(fake.devices) == {torch.device("cuda", current)}


@pytest.mark.parametrize("backend", ["gloo", "cpu:gloo,cuda:nccl"])
def test_groups_with_a_cpu_backend_exchange_host_tensors(monkeypatch, backend):
    fake = FakeDist(monkeypatch, backend=backend, bound=torch.device("cuda", 3))
    merge_across_ranks(accumulator())
    assert set(fake.devices) == {torch.device("cpu")}


def test_nccl_without_cuda_is_a_clear_error(monkeypatch):
    FakeDist(monkeypatch, bound=None, cuda_available=False)
    with pytest.raises(StreamnormError, match="NCCL, which needs a CUDA device"):
        merge_across_ranks(accumulator())


# -- real NCCL ranks ---------------------------------------------------------------------
def _nccl_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    device = torch.device("cuda", rank)
    # no torch.cuda.set_device: the bound device alone must place the collective
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, device_id=device,
                            timeout=datetime.timedelta(seconds=60))
    try:
        acc = sn.StatsAccumulator(layout="NF").update(
            np.full((3 + rank, 2), rank + 1, dtype=np.uint8))
        merged = merge_across_ranks(acc).result()
        state = json.loads(encode_state(merged).decode())["state"]
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
            {"state": state, "count": merged.count.tolist(), "mean": merged.mean.tolist(),
             "current": torch.cuda.current_device()}))
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
@cuda
@pytest.mark.timeout(200)
def test_nccl_ranks_bound_with_device_id(tmp_path):
    world = min(2, torch.cuda.device_count())
    ctx = mp.start_processes(_nccl_worker, args=(world, str(tmp_path / "init"), str(tmp_path)),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + 150
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("NCCL ranks did not finish within 150 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join(5)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    rows = sum(3 + r for r in range(world))
    want_mean = sum((3 + r) * (r + 1) for r in range(world)) / rows
    for r in results:
        assert r["state"] == results[0]["state"]
        assert r["count"] == [rows, rows]
        assert r["mean"] == pytest.approx([want_mean] * 2, rel=1e-15)
