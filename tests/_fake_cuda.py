"""A stand-in for ``torch.cuda`` streams and events, to check stream logic on the CPU.

:class:`FakeCuda` replaces ``torch.cuda.current_stream``, ``torch.cuda.stream``,
``torch.cuda.device`` and ``torch.cuda.Event`` and logs every synchronization
(``wait_stream``, ``wait_event``, event records, ``record_stream``) in order.
Current streams are per thread, as in CUDA. :func:`gpu_tensor` makes a CPU
tensor that reports a CUDA device and logs its ``record_stream`` calls: the
stream logic sees a GPU-resident input without a GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch


class FakeEvent:
    def __init__(self, cuda: FakeCuda) -> None:
        self._cuda = cuda
        self.name = "unrecorded"

    def record(self, stream: FakeStream | None = None) -> None:
        stream = stream if stream is not None else self._cuda.current_stream()
        self.name = f"event#{next(self._cuda.counter)}@{stream.name}"
        self._cuda.log.append(("record", self.name))


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
    """Per-thread current streams; ``default:<device>`` unless a ``stream()`` block is open."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.counter = iter(range(10**9))
        self._local = threading.local()
        self._defaults: dict[str, FakeStream] = {}
        self._lock = threading.Lock()

    def new_stream(self, name: str) -> FakeStream:
        return FakeStream(self, name)

    def current_stream(self, device: Any = None) -> FakeStream:
        stack = getattr(self._local, "stack", None)
        if stack:
            return stack[-1]
        key = "cuda:0" if device is None else str(torch.device(device))
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
        yield

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
        monkeypatch.setattr(torch.cuda, "current_stream", self.current_stream)
        monkeypatch.setattr(torch.cuda, "stream", self.stream)
        monkeypatch.setattr(torch.cuda, "device", self.device)
        monkeypatch.setattr(torch.cuda, "Event", lambda *a, **k: FakeEvent(self))
        return self


class _GPUTensor(torch.Tensor):
    """A CPU tensor that says it lives on a GPU (only ``.device`` and ``record_stream``)."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.__dict__.get("fake_device", torch.device("cpu"))

    def record_stream(self, stream: Any) -> None:  # type: ignore[override]
        self.__dict__["cuda"].log.append(("record_stream", self.__dict__["tag"], stream.name))


def gpu_tensor(cuda: FakeCuda, tag: str, device: str = "cuda:0") -> torch.Tensor:
    t = torch.zeros(2, 3, dtype=torch.uint8).as_subclass(_GPUTensor)
    t.__dict__.update(fake_device=torch.device(device), tag=tag, cuda=cuda)
    return t
