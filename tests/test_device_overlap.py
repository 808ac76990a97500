"""Copies and normalization on their own CUDA streams, linked by events (issue 9, GPU overlap).

DeviceLoader/DeviceNormalize copy a batch on a copy stream and normalize it on
a compute stream; the compute stream waits on an event of the copies (never on
the copy stream as a whole), the consumer waits on an event of the
normalization, so the copy of batch k+1 overlaps the normalization of batch k.
The ordering is checked on the CPU against :mod:`_fake_cuda`; the ``cuda``
tests slow one stream down with a sleep kernel, so that a missing wait or a
block recycled too early shows as wrong values.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from _fake_cuda import NORM, FakeCuda, FakePinning, fake_loader, fake_stage, gpu_tensor
from streamnorm.device import _each_tensor

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

KINDS = ["pinned", "pageable", "numpy", "label", "cuda:0", "cuda:1"]  # the target is cuda:0
N_BATCHES = 3


def entries(log, kind):
    return [e for e in log if e[0] == kind]


def element(fake, pins, kind, tag):
    if kind.startswith("cuda"):
        return gpu_tensor(fake, tag, kind)
    if kind == "numpy":
        return np.full((2, 3), 7, np.uint8)
    if kind == "label":
        return 5
    t = torch.full((2, 3), 7, dtype=torch.uint8)
    t.tag = tag
    return pins._pin(t) if kind == "pinned" else t


def build(container, elements):
    """(batch, key): ``key`` names element 0 (flat containers) or all elements (nested: a
    tuple at "x", normalized as one, and each element again in a list under "meta")."""
    if container == "nested":
        return {"x": tuple(elements), "meta": {"y": list(elements)}}, "x"
    if container == "dict":
        return {f"e{j}": e for j, e in enumerate(elements)}, "e0"
    return (tuple(elements) if container == "tuple" else list(elements)), 0


def moved_tag(kind, tag):
    """The tag of an element's device tensor (``None``: not a tensor)."""
    if kind == "label":
        return None
    if kind == "cuda:0":
        return tag  # already there: read in place
    if kind == "numpy":
        return "dev:?"
    return f"dev:{tag}"


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=5),
       container=st.sampled_from(["list", "tuple", "dict", "nested"]), pin_memory=st.booleans())
def test_copies_on_copy_stream_normalize_on_compute_stream_linked_by_events(kinds, container,
                                                                            pin_memory):
    fake = FakeCuda()
    with pytest.MonkeyPatch.context() as mp:
        fake.install(mp)
        pins = FakePinning(mp)
        batches, normalized, every = [], [], []
        for k in range(N_BATCHES):
            tags = [f"b{k}e{j}" for j in range(len(kinds))]
            batch, key = build(container, [element(fake, pins, kind, t) for kind, t in zip(kinds, tags)])
            batches.append(batch)
            picked = list(range(len(kinds))) if container == "nested" else [0]
            copies = 2 if container == "nested" else 1  # nested: each element twice
            normalized.append([(kinds[j], tags[j]) for j in picked])
            every.append([(kinds[j], tags[j]) for j in range(len(kinds)) for _ in range(copies)])
        dl = fake_loader(fake, batches, key=key, pin_memory=pin_memory)
        consumer = fake.new_stream("consumer")
        with fake.stream(consumer):
            out = list(dl)
    assert len(out) == N_BATCHES
    log = fake.log

    # every copy is issued on the copy stream, every normalization on the compute stream
    assert {e[2] for e in entries(log, "copy")} <= {"copy"}
    assert {e[1] for e in entries(log, "normalize")} == {"compute"}
    for k in range(N_BATCHES):
        want = sorted(t for kind, t in every[k] if kind in ("pinned", "pageable", "cuda:1"))
        got = sorted(e[1] for e in entries(log, "copy") if e[1].startswith(f"b{k}e"))
        assert got == want

    # the streams are linked by events only: compute waits on copy events, copy never waits
    # on compute or on the consumer, the consumer waits on compute events
    copy_events = [e[1] for e in entries(log, "record") if e[1].endswith("@copy")]
    done_events = [e[1] for e in entries(log, "record") if e[1].endswith("@compute")]
    assert len(copy_events) == len(done_events) == N_BATCHES
    assert [e for e in entries(log, "wait_event") if e[1] == "compute"] == [
        ("wait_event", "compute", c) for c in copy_events]
    assert [e for e in entries(log, "wait_event") if e[1] == "consumer"] == [
        ("wait_event", "consumer", d) for d in done_events]
    assert not [e for e in entries(log, "wait_event") if e[1] == "copy" and "@default" not in e[2]]
    assert not [e for e in entries(log, "wait_stream") if e[1] == "compute" or e[2] == "compute"]

    normalizes = [i for i, e in enumerate(log) if e[0] == "normalize"]
    per_batch = len(normalizes) // N_BATCHES
    for k in range(N_BATCHES):
        copied = log.index(("record", copy_events[k]))
        copy_ix = [i for i, e in enumerate(log) if e[0] == "copy" and e[1].startswith(f"b{k}e")]
        waited = log.index(("wait_event", "compute", copy_events[k]))
        work = normalizes[k * per_batch]
        done = log.index(("record", done_events[k]))
        handed = log.index(("wait_event", "consumer", done_events[k]))
        assert all(i < copied for i in copy_ix), "copy event recorded before the batch's copies"
        assert copied < waited < work < done < handed
        if k + 1 < N_BATCHES:
            nxt = [i for i, e in enumerate(log) if e[0] == "copy" and e[1].startswith(f"b{k + 1}e")]
            # one batch ahead: batch k+1 is copied before batch k is handed over
            assert all(i < handed for i in nxt)
            assert log.index(("record", copy_events[k + 1])) < handed

    # record_stream: on the copy stream what a peer copy reads, on the compute stream what the
    # normalization reads, on the consumer every tensor handed over
    recorded = entries(log, "record_stream")
    for k in range(N_BATCHES):
        mine = [e for e in recorded if f"b{k}e" in e[1]]
        assert sorted(e[1] for e in mine if e[2] == "copy") == sorted(
            t for kind, t in every[k] if kind == "cuda:1")
        assert sorted(e[1] for e in mine if e[2] == "compute") == sorted(
            moved_tag(kind, t) for kind, t in normalized[k]
            if moved_tag(kind, t) not in (None, "dev:?"))
    handed = sorted(t.__dict__["tag"] for b in out for t in _each_tensor(b))
    assert sorted(e[1] for e in recorded if e[2] == "consumer") == handed


def test_compute_waits_on_the_copy_event_not_the_copy_stream(monkeypatch):
    # a wait on the whole copy stream would also wait for the next batch's copies, issued
    # before the normalization of this one runs: no overlap
    fake = FakeCuda().install(monkeypatch)
    stage = fake_stage(fake)
    cpu = torch.zeros(2, 3, dtype=torch.uint8)
    cpu.tag = "x"
    launched = stage.launch(cpu)
    log = fake.log
    assert ("copy", "x", "copy") in log
    assert [e[0] for e in log if e[0] != "copy"][:3] == ["record", "wait_event", "normalize"]
    assert not entries(log, "wait_stream")
    with fake.stream(fake.new_stream("train")):
        out = stage.hand_off(launched)
    assert out.__dict__["tag"] == "out:dev:x"
    assert entries(log, "wait_event")[-1] == ("wait_event", "train", launched[1].name)
    assert entries(log, "record_stream") == [("record_stream", "dev:x", "compute"),
                                             ("record_stream", "out:dev:x", "train")]


def test_pinned_host_buffers_are_held_until_their_copy_completes(monkeypatch):
    fake = FakeCuda().install(monkeypatch)
    pins = FakePinning(monkeypatch)
    stage = fake_stage(fake, key=0)
    host = pins._pin(torch.zeros(2, 3, dtype=torch.uint8))
    pageable = torch.ones(2, dtype=torch.int64)
    held, free = weakref.ref(host), weakref.ref(pageable)
    launched = stage.launch((host, pageable))
    del host, pageable
    stage.hand_off(launched)
    gc.collect()
    assert held() is not None, "pinned buffer let go while its copy may still be running"
    assert free() is None  # pageable copies are synchronous: nothing to hold
    fake.complete()  # the copy stream has caught up
    stage.launch((gpu_tensor(fake, "next"), 0))
    gc.collect()
    assert held() is None, "pinned buffer still held after its copy completed"


def test_pinned_buffers_of_pending_copies_stay_held_in_order(monkeypatch):
    fake = FakeCuda().install(monkeypatch)
    pins = FakePinning(monkeypatch)
    stage = fake_stage(fake)
    refs = []
    for i in range(4):
        t = pins._pin(torch.full((2,), i, dtype=torch.uint8))
        refs.append(weakref.ref(t))
        stage.hand_off(stage.launch(t))
        if i == 1:
            fake.complete()  # copies of batches 0 and 1 done, 2 and 3 issued later
        del t
    gc.collect()
    assert [r() is None for r in refs] == [True, True, False, False]


# -- on a real GPU ------------------------------------------------------------------------
SLEEP = 20_000_000  # GPU cycles: about 10 ms, far longer than a copy or normalize of 4 MB


def filled_batches(n, size=1 << 22):
    return [(torch.full((size,), (37 * i + 11) % 256, dtype=torch.uint8), i) for i in range(n)]


def check(got, norm=NORM):
    for total, numel, i in got:
        value = (37 * i + 11) % 256
        assert total == pytest.approx(numel * float(norm(torch.tensor([value], dtype=torch.uint8))),
                                      rel=1e-5), f"batch {i}"


def slow_down(monkeypatch, stage, method):
    """Prefix every call of ``stage.<method>`` with a sleep kernel on the current stream."""
    original = getattr(stage, method)

    def slow(*args):
        torch.cuda._sleep(SLEEP)
        return original(*args)

    monkeypatch.setattr(stage, method, slow)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("pin_memory", [True, False])
def test_cuda_normalize_waits_for_slow_copies(monkeypatch, pin_memory):
    # a sleep on the copy stream before each copy: a normalization that does not wait for
    # the copy event reads the destination before the copy lands
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    dl = sn.DeviceLoader(filled_batches(12), NORM, device=device, key=0, pin_memory=pin_memory)
    slow_down(monkeypatch, dl._stage, "_copy")
    consumer = torch.cuda.Stream(device)
    with torch.cuda.device(device), torch.cuda.stream(consumer):
        got = [(x.double().sum().item(), x.numel(), i) for x, i in dl]
    check(got)
    assert dl.copy_stream is not dl.stream


@pytest.mark.cuda
@cuda
def test_cuda_consumer_waits_for_slow_normalize_and_inputs_are_not_recycled(monkeypatch):
    # a sleep on the compute stream before each normalization: the copy stream races ahead;
    # a copied input not record_stream-ed on the compute stream is recycled for the next
    # copy before it is read, and a consumer that does not wait reads unwritten output
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    dl = sn.DeviceLoader(filled_batches(12), NORM, device=device, key=0)
    slow_down(monkeypatch, dl._stage, "_normalize")
    consumer = torch.cuda.Stream(device)
    with torch.cuda.device(device), torch.cuda.stream(consumer):
        got = [(x.double().sum().item(), x.numel(), i) for x, i in dl]
    check(got)


@pytest.mark.cuda
@cuda
def test_cuda_streams_once_per_loader_and_outputs_match_synchronous_reference():
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    batches = [(torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8), {"i": i}) for i in range(20)]
    norm = sn.Normalizer.from_mean_std([100.0, 110.0, 120.0], [50.0, 55.0, 60.0])
    dl = sn.DeviceLoader(batches, norm, device=device, key=0)
    streams = (dl.copy_stream, dl.stream)
    assert streams[0] is not None and streams[1] is not None and streams[0] != streams[1]
    for _ in range(2):
        outs = [(x.cpu(), meta["i"]) for x, meta in dl]
        for x, i in outs:
            torch.testing.assert_close(x, norm(batches[i][0]), rtol=1e-6, atol=1e-6)
        assert (dl.copy_stream, dl.stream) == streams  # not re-created per epoch
