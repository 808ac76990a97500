"""A stand-in for ``torch.cuda`` streams and events, to check stream logic on the CPU.

:class:`FakeCuda` replaces ``torch.cuda.current_stream``, ``torch.cuda.stream``,
``torch.cuda.device`` and ``torch.cuda.Event`` and logs every synchronization
(``wait_stream``, ``wait_event``, event records, ``record_stream``) in order.
Current streams are per thread, as in CUDA. :func:`gpu_tensor` makes a CPU
tensor that reports a CUDA device and logs its ``record_stream`` calls: the
stream logic sees a GPU-resident input without a GPU. :func:`fake_stage` and
:func:`fake_loader` build a :class:`~streamnorm.device.DeviceStage` /
:class:`~streamnorm.DeviceLoader` for ``cuda:0`` on those fakes, whose copies
and normalization log the stream they are issued on.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

import streamnorm as sn
from streamnorm.batch import pick, replace
from streamnorm.device import DeviceStage


class FakeEvent:
    def __init__(self, cuda: FakeCuda) -> None:
        self._cuda = cuda
        self.name = "unrecorded"
        self.done = False  # what query() answers: set by FakeCuda.complete()

    def record(self, stream: FakeStream | None = None) -> None:
        stream = stream if stream is not None else self._cuda.current_stream()
        self.name = f"event#{next(self._cuda.counter)}@{stream.name}"
        self._cuda.log.append(("record", self.name))
        self._cuda.events.append(self)

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self._cuda.log.append(("synchronize", self.name))

    def elapsed_time(self, end: FakeEvent) -> float:
        return 1.0  # milliseconds


class FakeStream:
    def __init__(self, cuda: FakeCuda, name: str) -> None:
        self._cuda = cuda
        self.name = name

    def wait_stream(self, other: FakeStream) -> None:
        self._cuda.log.append(("wait_stream", self.name, other.name))

    def wait_event(self, event: FakeEvent) -> None:
        self._cuda.log.append(("wait_event", self.name, event.name))

    def record_event(self, event: FakeEvent | None = None) -> FakeEvent:
        event = event if event is not None else FakeEvent(self._cuda)
        event.record(self)
        return event

    def __repr__(self) -> str:
        return f"FakeStream({self.name})"


class FakeCuda:
    """Per-thread current device and streams.

    The current device is cuda:0 unless a ``device()`` block is open; the current
    stream is ``default:<device>`` unless a ``stream()`` block is open.
    """

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.events: list[FakeEvent] = []
        self.counter = iter(range(10**9))
        self._local = threading.local()
        self._defaults: dict[str, FakeStream] = {}
        self._lock = threading.Lock()

    def complete(self) -> None:
        """Every event recorded so far has completed (the GPU caught up)."""
        for event in self.events:
            event.done = True

    def new_stream(self, name: str) -> FakeStream:
        return FakeStream(self, name)

    def current_device(self) -> str:
        return getattr(self._local, "device", "cuda:0")

    def current_stream(self, device: Any = None) -> FakeStream:
        stack = getattr(self._local, "stack", None)
        if stack:
            return stack[-1]
        key = self.current_device() if device is None else str(torch.device(device))
        with self._lock:
            return self._defaults.setdefault(key, FakeStream(self, f"default:{key}"))

    @contextmanager
    def stream(self, stream: FakeStream) -> Iterator[None]:
        stack = self._local.__dict__.setdefault("stack", [])
        stack.append(stream)
        try:
            yield
        finally:
            stack.pop()

    @contextmanager
    def device(self, device: Any) -> Iterator[None]:
        before = self.current_device()
        self._local.device = str(torch.device(device))
        try:
            yield
        finally:
            self._local.device = before

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
        monkeypatch.setattr(torch.cuda, "current_stream", self.current_stream)
        monkeypatch.setattr(torch.cuda, "stream", self.stream)
        monkeypatch.setattr(torch.cuda, "device", self.device)
        monkeypatch.setattr(torch.cuda, "Event", lambda *a, **k: FakeEvent(self))
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
        return self


class _GPUTensor(torch.Tensor):
    """A CPU tensor that says it lives on a GPU (only ``.device`` and ``record_stream``)."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.__dict__.get("fake_device", torch.device("cpu"))

    def record_stream(self, stream: Any) -> None:  # type: ignore[override]
        self.__dict__["cuda"].log.append(("record_stream", self.__dict__["tag"], stream.name))


def gpu_tensor(cuda: FakeCuda, tag: str, device: str = "cuda:0", data: Any = None) -> torch.Tensor:
    """A fake GPU tensor: ``data``'s values (default: a 2x3 uint8 zero), tagged ``tag``."""
    base = torch.zeros(2, 3, dtype=torch.uint8) if data is None else torch.as_tensor(data)
    t = base.detach().clone().as_subclass(_GPUTensor)
    t.__dict__.update(fake_device=torch.device(device), tag=tag, cuda=cuda)
    return t


def tag_of(t: Any) -> str:
    """The tag of a fake GPU tensor or of a CPU tensor given one (``t.tag = ...``), else ``"?"``."""
    return t.__dict__.get("tag", "?") if isinstance(t, torch.Tensor) else "?"


NORM = sn.Normalizer.from_range(0, 255)


def fake_stage(fake: FakeCuda, key: Any = None, norm: Any = NORM) -> DeviceStage:
    """A DeviceStage for ``cuda:0`` on the fakes: streams ``copy`` and ``compute``.

    A copy logs ``("copy", tag, stream)`` and returns a fake GPU tensor tagged
    ``dev:<tag>``; the normalization logs ``("normalize", stream, tag)`` for each
    tensor it reads and puts a fake GPU tensor tagged ``out:<tag>`` in its place.
    """
    stage = DeviceStage(norm, "cpu", key)
    stage.device = torch.device("cuda", 0)
    stage.copy_stream = fake.new_stream("copy")
    stage.compute_stream = fake.new_stream("compute")

    def copy(t: torch.Tensor) -> torch.Tensor:
        tag = tag_of(t)
        fake.log.append(("copy", tag, fake.current_stream().name))
        return gpu_tensor(fake, f"dev:{tag}", str(stage.device), data=t)

    def normalize(batch: Any) -> Any:
        for k in stage.normalizers:
            x = pick(batch, k)
            fake.log.append(("normalize", fake.current_stream().name, tag_of(x)))
            batch = replace(batch, k, gpu_tensor(fake, f"out:{tag_of(x)}", str(stage.device),
                                              data=x if isinstance(x, torch.Tensor) else None))
        return batch

    stage._copy = copy
    stage._normalize = normalize
    return stage


def fake_loader(fake: FakeCuda, source: Any, key: Any = None, **kwargs: Any) -> sn.DeviceLoader:
    """A DeviceLoader over ``source`` whose stage is :func:`fake_stage`."""
    dl = sn.DeviceLoader(source, NORM, device="cpu", key=key, **kwargs)
    dl._stage = fake_stage(fake, key)
    return dl


class FakePinning:
    """``Tensor.pin_memory``/``is_pinned`` for a CPU-only torch: a pinned copy is remembered.

    Only weakly, so that a test can see when the code under test lets a pinned buffer go.
    """

    def __init__(self, monkeypatch) -> None:
        self._pinned: dict[int, weakref.ref] = {}
        self.threads: set[str] = set()
        monkeypatch.setattr(torch.Tensor, "is_pinned", lambda t: self.is_pinned(t))
        monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: self._pin(t))

    def _pin(self, t):
        self.threads.add(threading.current_thread().name)
        copy = t.clone()
        copy.__dict__.update({k: v for k, v in t.__dict__.items() if k == "tag"})
        self._pinned[id(copy)] = weakref.ref(copy)
        return copy

    def is_pinned(self, t) -> bool:
        ref = self._pinned.get(id(t))
        return ref is not None and ref() is t
