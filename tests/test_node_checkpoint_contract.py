"""torchdata's checkpoint contract, checked on every node streamnorm has.

The contract (the one torchdata's own node tests hold every node to): wrap the
node in a ``Loader``, iterate several epochs, and at any point, epoch ends
included, take ``loader.state_dict()``. Restoring that state into a *fresh*
pipeline (new node, new accumulator) must produce exactly the items the
original produced from that point on, epoch after epoch, and, for the
statistics nodes, exactly the same accumulator contents at every epoch end
(every item counted exactly once, bit for bit). A state taken at the end of an
epoch restores to the next epoch (``restart_on_stop_iteration=True``) or to
nothing (``False``).

This file is our own checker of that contract, written against the public
``Loader`` API, and applied to every node: ``CollectStats`` (``max_passes``
1, 2 and None; with a ``Prefetcher`` upstream, downstream, or none) and
``DeviceNormalize`` (CPU; CUDA where present), with and without a
``Prefetcher`` upstream.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchdata.nodes import BaseNode, IterableWrapper, Loader, Prefetcher

import streamnorm as sn
from streamnorm.batch import pick
from streamnorm.nodes import CollectStats, DeviceNormalize

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# build() -> (root node, accumulator or None): a fresh pipeline each call
Build = Callable[[], "tuple[BaseNode, sn.StatsAccumulator | None]"]


# -- the checker ------------------------------------------------------------------
def same(a: Any, b: Any) -> bool:
    """Structural, exact equality of two items (tensors, arrays, containers, scalars)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.device == b.device and a.shape == b.shape
                and bool(torch.equal(a.cpu(), b.cpu())))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and np.array_equal(a, b))
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b)))
    return type(a) is type(b) and a == b


def snapshot(acc: sn.StatsAccumulator | None) -> sn.Stats | None:
    if acc is None or acc.n_features is None:
        return None
    return acc.result()


def same_stats(got: sn.Stats | None, want: sn.Stats | None) -> bool:
    if want is None or got is None:
        return got is None and want is None
    return got.equals(want)


def as_checkpoint(state: dict) -> dict:
    """What a checkpoint file would give back (and a copy nothing live can change)."""
    return pickle.loads(pickle.dumps(state))


@dataclass
class Checkpoint:
    epoch: int
    position: int  # items handed out in `epoch` when taken
    ended: bool  # taken after the epoch's StopIteration
    state: dict


@dataclass
class Reference:
    epochs: list[list[Any]] = field(default_factory=list)  # the items of each epoch
    stats: list[sn.Stats | None] = field(default_factory=list)  # accumulator at each epoch end
    checkpoints: list[Checkpoint] = field(default_factory=list)


def reference_run(build: Build, n_epochs: int, checkpoint_epochs: int) -> Reference:
    """Run ``n_epochs`` uninterrupted, checkpointing at every position of the first epochs."""
    root, acc = build()
    loader = Loader(root)
    ref = Reference()
    for epoch in range(n_epochs):
        take = epoch < checkpoint_epochs
        it = iter(loader)
        items: list[Any] = []
        if take:
            ref.checkpoints.append(Checkpoint(epoch, 0, False, as_checkpoint(loader.state_dict())))
        for item in it:
            items.append(item)
            if take:
                ref.checkpoints.append(
                    Checkpoint(epoch, len(items), False, as_checkpoint(loader.state_dict())))
        if take:
            ref.checkpoints.append(
                Checkpoint(epoch, len(items), True, as_checkpoint(loader.state_dict())))
        ref.epochs.append(items)
        ref.stats.append(snapshot(acc))
    return ref


def check_restore(build: Build, ref: Reference, cp: Checkpoint, again: bool = True) -> None:
    """Restore ``cp`` into a fresh pipeline; what follows must equal the reference.

    With ``again``, the restored pipeline is checkpointed at once, and that
    state must restore to the same continuation (a restore is itself resumable).
    """
    where = f"checkpoint at epoch {cp.epoch}, item {cp.position}{' (ended)' if cp.ended else ''}"
    n_items = len(ref.epochs[cp.epoch])

    # restart_on_stop_iteration=True: the rest of the epoch, then whole epochs
    root, acc = build()
    loader = Loader(root)
    loader.load_state_dict(cp.state)
    if again:
        restored = as_checkpoint(loader.state_dict())
        check_restore(build, ref, Checkpoint(cp.epoch, cp.position, cp.ended, restored), again=False)
    first = cp.epoch if cp.position < n_items else cp.epoch + 1
    for epoch in range(first, len(ref.epochs)):
        got = list(loader)
        want = ref.epochs[epoch][cp.position:] if epoch == cp.epoch else ref.epochs[epoch]
        assert len(got) == len(want), f"{where}: epoch {epoch} gave {len(got)} items, not {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert same(g, w), f"{where}: epoch {epoch}, item {i} differs"
        assert same_stats(snapshot(acc), ref.stats[epoch]), (
            f"{where}: accumulator at the end of epoch {epoch} differs from an uninterrupted run")

    # restart_on_stop_iteration=False: a state at an epoch's end yields nothing more
    if cp.position == n_items:
        root, acc = build()
        loader = Loader(root, restart_on_stop_iteration=False)
        loader.load_state_dict(cp.state)
        assert list(loader) == [], f"{where}: restart_on_stop_iteration=False yielded items"
        assert same_stats(snapshot(acc), ref.stats[cp.epoch]), (
            f"{where}: accumulator after an empty resumed epoch differs")


def check_checkpoint_contract(build: Build, n_epochs: int = 3, checkpoint_epochs: int = 2) -> None:
    """Checkpoint at every position (epoch ends included) of the first epochs; restore each."""
    ref = reference_run(build, n_epochs, checkpoint_epochs)
    assert ref.checkpoints, "the reference run took no checkpoints"
    for cp in ref.checkpoints:
        check_restore(build, ref, cp)


# -- the pipelines ----------------------------------------------------------------
N_BATCHES = 4


def batches(dtype=np.uint8, n: int = N_BATCHES, seed: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "u":
        return [rng.integers(0, 256, (3, 2, 2, 2), dtype=np.uint8) for _ in range(n)]
    return [(rng.standard_normal((3, 2, 2, 2)) * 7 + 1e3).astype(dtype) for _ in range(n)]


def collect(items, max_passes, prefetch, key=None) -> Build:
    histogram = np.asarray(pick(items[0], key)).dtype == np.uint8

    def build():
        acc = sn.StatsAccumulator(histogram=histogram)
        source: BaseNode = IterableWrapper(items)
        if prefetch == "upstream":
            source = Prefetcher(source, prefetch_factor=2)
        node: BaseNode = CollectStats(source, acc, key=key, max_passes=max_passes)
        if prefetch == "downstream":
            node = Prefetcher(node, prefetch_factor=2)
        return node, acc

    return build


def image_items(n: int = N_BATCHES) -> list[tuple[torch.Tensor, int]]:
    gen = torch.Generator().manual_seed(11)
    return [(torch.randint(0, 256, (2, 3, 2, 2), dtype=torch.uint8, generator=gen), i)
            for i in range(n)]


def normalize(items, device, prefetch: bool, dtype=torch.float32) -> Build:
    norm = sn.Normalizer.from_mean_std([100.0, 110.0, 120.0], [50.0, 55.0, 60.0])

    def build():
        source: BaseNode = IterableWrapper(items)
        if prefetch:
            source = Prefetcher(source, prefetch_factor=2)
        if torch.device(device).type == "cuda":
            from torchdata.nodes import PinMemory

            source = PinMemory(source)
        return DeviceNormalize(source, norm, device, key=0, dtype=dtype), None

    return build


# -- item 12: every node, every position -----------------------------------------
@pytest.mark.parametrize("prefetch", [None, "upstream", "downstream"])
@pytest.mark.parametrize("max_passes", [1, 2, None])
def test_collect_stats_checkpoint_contract(max_passes, prefetch):
    check_checkpoint_contract(collect(batches(), max_passes, prefetch), n_epochs=3)


def test_collect_stats_checkpoint_contract_dict_items_float():
    items = [{"x": b, "i": i} for i, b in enumerate(batches(np.float32))]
    check_checkpoint_contract(collect(items, 2, None, key="x"), n_epochs=3)


def test_collect_stats_end_of_epoch_restore_collects_the_next_pass():
    # the reported case: max_passes=2, state taken at the end of epoch 0
    data = batches()
    root, acc = collect(data, 2, None)()
    loader = Loader(root)
    list(loader)
    state = as_checkpoint(loader.state_dict())
    fresh_root, fresh_acc = collect(data, 2, None)()
    fresh = Loader(fresh_root)
    fresh.load_state_dict(state)
    assert len(list(fresh)) == N_BATCHES
    assert fresh_root.completed_passes == 2
    assert fresh_acc.result().count.tolist() == [2 * 3 * 2 * 2 * N_BATCHES] * 2


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 4), max_passes=st.sampled_from([1, 2, 3, None]),
       dtype=st.sampled_from([np.uint8, np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_collect_stats_checkpoint_contract_any_length(n, max_passes, dtype, seed):
    check_checkpoint_contract(collect(batches(dtype, n, seed), max_passes, None), n_epochs=4,
                              checkpoint_epochs=3)


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_device_normalize_cpu_checkpoint_contract(prefetch, dtype):
    check_checkpoint_contract(normalize(image_items(), "cpu", prefetch, dtype), n_epochs=3)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("prefetch", [False, True])
def test_device_normalize_cuda_checkpoint_contract(prefetch):
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    check_checkpoint_contract(normalize(image_items(), device, prefetch), n_epochs=3)
