"""Stream safety of the CUDA hand-off and the pin thread (issue 8, items 14 and 16).

The stream logic is checked on the CPU against :mod:`_fake_cuda` (streams and
events that log every synchronization, tensors that say they live on a GPU);
the ``cuda``-marked tests check the same on a real GPU, where a producer that
is still busy, or memory recycled too early, shows as wrong values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

import streamnorm as sn
from _fake_cuda import NORM, FakeCuda, FakePinning, fake_loader, fake_stage, gpu_tensor
from streamnorm.device import _pinning

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def entries(log, kind):
    return [e for e in log if e[0] == kind]


# -- item 14: device-resident inputs ----------------------------------------------
KINDS = st.sampled_from(["cpu", "numpy", "label", "cuda:0", "cuda:1"])


def make_element(fake, kind, i):
    if kind.startswith("cuda"):
        return gpu_tensor(fake, f"t{i}", kind)
    if kind == "numpy":
        return np.zeros((2, 3), np.uint8)
    if kind == "label":
        return i
    t = torch.zeros(2, 3, dtype=torch.uint8)
    t.tag = f"t{i}"
    return t


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(KINDS, min_size=1, max_size=6), nest=st.booleans(),
       in_user_stream=st.booleans())
def test_gpu_inputs_wait_for_their_producer_stream_and_are_recorded(kinds, nest, in_user_stream):
    # the stage targets cuda:0: cuda:1 inputs are copied (read on the copy stream), cuda:0
    # inputs are read in place by the normalization (on the compute stream)
    fake = FakeCuda()
    with pytest.MonkeyPatch.context() as mp:
        fake.install(mp)
        stage = fake_stage(fake, key="x" if nest else 0)
        elements = [make_element(fake, kind, i) for i, kind in enumerate(kinds)]
        gpu = {f"t{i}": kind for i, kind in enumerate(kinds) if kind.startswith("cuda")}
        batch = {"x": tuple(elements), "y": [elements[:1]]} if nest else elements
        user = fake.new_stream("user")
        if in_user_stream:
            with fake.stream(user):
                stage.launch(batch)
        else:
            stage.launch(batch)

    log = fake.log
    producers = list(dict.fromkeys(gpu.values()))
    want_waits = [("wait_stream", "copy", "user" if in_user_stream else f"default:{d}")
                  for d in producers]
    assert entries(log, "wait_stream") == want_waits  # none for CPU-only batches: no lost overlap
    copies = [i for i, e in enumerate(log) if e[0] == "copy"]
    assert all(log.index(w) < min(copies, default=len(log)) for w in want_waits), \
        "copied before the producer was done"
    # t0 appears twice nested (in x and in y): each occurrence is read by its own copy
    n_read = {tag: 2 if nest and tag == "t0" else 1 for tag in gpu}
    on_copy = [("record_stream", t, "copy") for t, kind in gpu.items() if kind == "cuda:1"
               for _ in range(n_read[t])]
    normalized = [f"t{i}" for i in range(len(kinds))] if nest else ["t0"]
    on_compute = [("record_stream", t if gpu.get(t) == "cuda:0" else f"dev:{t}", "compute")
                  for t in normalized if kinds[int(t[1:])] in ("cpu", "cuda:0", "cuda:1")]
    recorded = entries(log, "record_stream")
    assert sorted(e for e in recorded if e[2] == "copy") == sorted(on_copy)
    assert sorted(e for e in recorded if e[2] == "compute" and "?" not in e[1]) == sorted(on_compute)
    work = log.index(next(e for e in log if e[0] == "normalize"))
    assert all(log.index(r) > max(copies) for r in on_copy), "recorded before the copy was issued"
    assert all(log.index(r) > work for r in on_compute), "recorded before the compute stream used them"


def gpu_batches(fake, n):
    for i in range(n):
        yield {"image": gpu_tensor(fake, f"b{i}"), "label": i}


def test_pin_thread_marks_gpu_inputs_on_the_stream_that_wrote_them(monkeypatch):
    # the source runs in the pin thread, whose current stream wrote the tensors; the
    # consumer iterates on a stream of its own: the copy stream must wait for the former
    fake = FakeCuda().install(monkeypatch)
    dl = fake_loader(fake, gpu_batches(fake, 3), key="image")
    consumer = fake.new_stream("consumer")
    with fake.stream(consumer):
        out = list(dl)
    assert [b["label"] for b in out] == [0, 1, 2]
    log = fake.log
    marks = [e[1] for e in entries(log, "record") if e[1].endswith("@default:cuda:0")]
    assert len(marks) == 3  # one event per batch, recorded on the pin thread's stream
    assert entries(log, "wait_event")[:1] == [("wait_event", "copy", marks[0])]
    assert {e for e in entries(log, "wait_event") if e[1] == "copy"} == {
        ("wait_event", "copy", m) for m in marks}
    assert not entries(log, "wait_stream")  # never the consumer's stream: it did not write them
    # already on cuda:0, read in place by the normalization
    assert sorted(e[1] for e in entries(log, "record_stream") if e[2] == "compute") == ["b0", "b1", "b2"]


def test_without_pin_thread_gpu_inputs_wait_for_the_callers_stream(monkeypatch):
    fake = FakeCuda().install(monkeypatch)
    dl = fake_loader(fake, gpu_batches(fake, 2), key="image", pin_memory=False)
    consumer = fake.new_stream("consumer")
    with fake.stream(consumer):
        list(dl)
    assert entries(fake.log, "wait_stream") == [("wait_stream", "copy", "consumer")] * 2


# -- item 16: the consumer's stream, the pin thread, numpy under pin_memory=True ------
def test_hand_off_syncs_with_the_stream_current_at_each_next(monkeypatch):
    fake = FakeCuda().install(monkeypatch)
    dl = fake_loader(fake, [torch.zeros(2, 3)] * 3, pin_memory=False)
    it = iter(dl)
    streams = [fake.new_stream(f"s{i}") for i in range(3)]
    for s in streams:
        with fake.stream(s):
            next(it)
    done = [e[1] for e in entries(fake.log, "record") if e[1].endswith("@compute")]
    consumer_waits = [e for e in entries(fake.log, "wait_event") if e[1] != "compute"]
    assert consumer_waits == [("wait_event", s.name, d) for s, d in zip(streams, done)]


def test_pin_thread_runs_with_one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        seen = list(_pinning(iter(range(4)), None, prepare=lambda _: torch.get_num_threads()))
        assert seen == [1, 1, 1, 1]
        assert torch.get_num_threads() == 3  # the setting is the pin thread's own
    finally:
        torch.set_num_threads(before)


class Rows(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        return np.full((3, 2, 2), i, np.uint8), i


def numpy_collate(items):
    return np.stack([x for x, _ in items]), np.array([i for _, i in items])


def test_numpy_left_unpinned_by_a_pinning_dataloader_is_pinned(monkeypatch):
    fake = FakeCuda().install(monkeypatch)
    pins = FakePinning(monkeypatch)
    # a custom collate returns numpy: DataLoader(pin_memory=True) pins tensors only
    loader = DataLoader(Rows(), batch_size=2, collate_fn=numpy_collate, pin_memory=True)
    dl = fake_loader(fake, loader, key=0)
    launched = []
    launch = dl._stage.launch
    monkeypatch.setattr(dl._stage, "launch", lambda *a: (launched.append(a[0]), launch(*a))[1])
    with pytest.warns(UserWarning, match="pin_memory"):  # no accelerator here
        out = list(dl)
    assert [y.tolist() for _, y in out] == [[0, 1], [2, 3], [4, 5]]
    assert len(launched) == 3
    for x, y in launched:
        assert isinstance(x, torch.Tensor) and pins.is_pinned(x)
        assert isinstance(y, torch.Tensor) and pins.is_pinned(y)
    assert pins.threads == {"streamnorm-pin"}  # pinned off the training thread


def test_tensors_pinned_by_the_loader_pass_through_untouched(monkeypatch):
    fake = FakeCuda().install(monkeypatch)
    pins = FakePinning(monkeypatch)
    already = pins._pin(torch.zeros(2, 3, dtype=torch.uint8))
    pins.threads.clear()

    class PinningLoader:
        pin_memory = True

        def __iter__(self):
            yield already, np.ones(2, np.int64)

    dl = fake_loader(fake, PinningLoader(), key=0)
    launched = []
    launch = dl._stage.launch
    monkeypatch.setattr(dl._stage, "launch", lambda *a: (launched.append(a[0]), launch(*a))[1])
    list(dl)
    (x, y), = launched
    assert x is already
    assert pins.is_pinned(y) and y.tolist() == [1, 1]


# -- on a real GPU ----------------------------------------------------------------------
def busy_gpu_source(device, n, size=1 << 22):
    """Each batch written on the current stream after a long sleep: a reader that does not
    wait for that stream sees the memory before the fill."""
    for i in range(n):
        torch.cuda._sleep(50_000_000)
        yield torch.full((size,), (37 * i + 11) % 256, dtype=torch.uint8, device=device), i


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("pin_memory", [True, False])
def test_cuda_gpu_resident_inputs_are_read_after_their_producer(pin_memory):
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    consumer = torch.cuda.Stream(device)
    dl = sn.DeviceLoader(busy_gpu_source(device, 8), NORM, device=device, key=0,
                         pin_memory=pin_memory)
    with torch.cuda.device(device), torch.cuda.stream(consumer):
        got = [(x.float().sum().item(), x.numel(), i) for x, i in dl]
    torch.cuda.synchronize(device)
    for total, numel, i in got:
        value = (37 * i + 11) % 256
        assert total == pytest.approx(numel * np.float32(value / 255), rel=1e-5)


@pytest.mark.cuda
@cuda
def test_cuda_numpy_batches_under_pinning_dataloader_are_pinned(monkeypatch):
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    loader = DataLoader(Rows(), batch_size=2, collate_fn=numpy_collate, pin_memory=True)
    dl = sn.DeviceLoader(loader, NORM, device=device, key=0)
    pinned = []
    launch = dl._stage.launch

    def spy(batch, ready=None):
        pinned.extend(t.is_pinned() for t in batch)
        return launch(batch, ready)

    monkeypatch.setattr(dl._stage, "launch", spy)
    out = [(x.cpu(), y.cpu()) for x, y in dl]
    assert pinned and all(pinned)
    for x, y in out:
        for row, i in zip(x, y.tolist()):
            torch.testing.assert_close(row, NORM(torch.full((3, 2, 2), i, dtype=torch.uint8)))
