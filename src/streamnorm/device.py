"""Move CPU batches to the device and normalize them there.

:class:`DeviceLoader` wraps any iterable of CPU batches (a ``DataLoader``, a
``torchdata.nodes.Loader``, a list). Workers and the PCIe link carry the raw
data (uint8 images: a quarter of the bytes of float32); the affine map runs on
the device, where it costs one elementwise pass.

On CUDA, per batch:

1. host memory is pinned by a background thread (one torch thread, as
   DataLoader's own pin loop), one batch ahead: numpy arrays and tensors the
   source left unpinned; what ``DataLoader(pin_memory=True)`` pinned passes
   through untouched;
2. every tensor is copied with ``non_blocking=True`` on a *copy stream*, and
   the tensor(s) at ``key`` are normalized on a *compute stream*; both are
   created once per :class:`DeviceLoader` (not per epoch) and linked by
   events: the compute stream waits on an event recorded after the batch's
   copies, so the copy of batch ``k + 1`` overlaps the normalization of batch
   ``k``. The device copies that the compute stream reads are
   ``record_stream``-ed on it, so the allocator does not hand their blocks
   to the next copy before the normalization has read them; the pinned host
   buffers are held until the copy's event has completed (pinned memory
   cannot be ``record_stream``-ed; torch's caching host allocator also
   records its own event on the copy stream). Tensors already on a GPU (from
   a GPU decoder) are read safely: the copy stream first waits for the work
   that wrote them (queued on the stream current on their device in the
   thread that iterated the source: the pin thread, or the caller of
   ``next()`` with ``pin_memory=False``), which the compute stream inherits
   through the copy event, and they are ``record_stream``-ed on each stream
   that reads them (the copy stream for a copy from another GPU, the compute
   stream when normalized in place on the device), so the allocator keeps
   their memory until those streams are done with it;
3. batch ``k + 1`` is launched before batch ``k`` is handed over, so its
   copy overlaps the training step on batch ``k``;
4. the hand-off is stream-safe: the stream that is current (on the target
   device, in the calling thread) when ``next()`` is called, the consumer,
   waits on an event recorded on the compute stream after batch ``k``'s
   normalization (which itself came after its copies), and every tensor is
   ``record_stream``-ed on it so the caching allocator never recycles memory
   the training step still reads. Use the batch on that stream: call
   ``next()`` (iterate) inside ``with torch.cuda.stream(s):`` to train on a
   stream ``s`` of your own.

On the CPU the same API normalizes in the main process.

Statistics are never accumulated here or inside a ``Dataset``: with DataLoader
workers each process would hold a fragment. Compute them in the main process
with :func:`~streamnorm.compute_stats` (``compute_stats(loader, key=0)``) or
:class:`~streamnorm.nodes.CollectStats`, before or while training.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from ._prefetch import Prefetch
from .batch import Key, pick, replace
from .errors import StreamnormError
from .normalize import Normalizer, _float_out, _from_numpy, _resolve_device

__all__ = ["DeviceLoader", "DeviceStage", "move_to_device"]


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _map_tensors(obj: Any, fn) -> Any:
    """Apply ``fn`` to every tensor (and numeric numpy array) of a nested batch."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        return fn(_from_numpy(obj))
    if isinstance(obj, Mapping):
        items = {k: _map_tensors(v, fn) for k, v in obj.items()}
        try:
            return type(obj)(items)
        except TypeError:
            return items
    if isinstance(obj, tuple):
        items = [_map_tensors(v, fn) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    return obj


def _each_tensor(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _each_tensor(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _each_tensor(v)


def move_to_device(batch: Any, device: Any, non_blocking: bool = False) -> Any:
    """A copy of a nested batch with every tensor (and numeric numpy array) on ``device``.

    Tuples (named tuples too), lists and mappings keep their types; anything
    else (strings, ints) passes through.

    Examples
    --------
    >>> import numpy as np, torch
    >>> out = move_to_device({"x": np.ones(2), "meta": ["a", torch.zeros(1)]}, "cpu")
    >>> type(out["x"]).__name__, out["meta"][0]
    ('Tensor', 'a')
    """
    dev = torch.device(device)
    return _map_tensors(batch, lambda t: t.to(dev, non_blocking=non_blocking))


def _pin(batch: Any) -> Any:
    return _map_tensors(batch, lambda t: t if t.is_pinned() or t.device.type != "cpu"
                        else t.pin_memory())


def _gpu_devices(batch: Any) -> list[torch.device]:
    """The CUDA devices that hold tensors of ``batch``, each once, in order of appearance."""
    return list(dict.fromkeys(t.device for t in _each_tensor(batch) if t.device.type == "cuda"))


def _producer_events(batch: Any) -> dict[torch.device, Any]:
    """For each GPU holding a tensor of ``batch``: an event on the current stream there.

    Recorded in the thread that received the batch from its source, so that a
    consumer in another thread can wait for the work that wrote it.
    """
    return {dev: torch.cuda.current_stream(dev).record_event() for dev in _gpu_devices(batch)}


def _pin_and_mark(batch: Any) -> tuple[Any, dict[torch.device, Any]]:
    return _pin(batch), _producer_events(batch)


def _pinning(source: Iterator[Any], device: torch.device | None,
             prepare: Callable[[Any], Any] = _pin_and_mark) -> Prefetch:
    """Batches of ``source`` pinned (``prepare``-d) on a background thread, two ahead."""

    def setup() -> None:
        # thread-local: pinning copies must not take every core from the training
        # process (what DataLoader's own pin loop does)
        torch.set_num_threads(1)
        if device is not None and device.type == "cuda":
            torch.cuda.set_device(device)  # work in our device's context, not cuda:0

    return Prefetch(source, depth=2, prepare=prepare, setup=setup, name="streamnorm-pin")


def _check_key(key: Any) -> None:
    if key is not None and (isinstance(key, bool) or not isinstance(key, (int, str))):
        raise StreamnormError(
            f"key must be an int (tuple/list batches), a str (dict batches) or None, got {key!r}"
        )


class DeviceStage:
    """Copy a CPU batch to the device and normalize it there (shared by loader and node).

    Holds the normalizers (moved to the device once) and, on CUDA, two
    streams created once: :attr:`copy_stream` for the host-to-device (and
    peer) copies, :attr:`compute_stream` for the normalization.
    :meth:`launch` enqueues a batch's copies, then its normalization behind
    an event of the copies, and returns an event of the normalization;
    :meth:`hand_off` makes the caller's current stream wait for that event
    and ``record_stream``-s every tensor. On the CPU :meth:`apply` does both
    at once.

    Both sides synchronize with the streams current in the calling thread:
    :meth:`launch` with the producer of inputs already on a GPU (the current
    stream of their device), :meth:`hand_off` with the consumer (the current
    stream of :attr:`device`).
    """

    def __init__(
        self,
        norm: Normalizer | Mapping[Key, Normalizer],
        device: Any = None,
        key: Key = None,
        dtype: Any = torch.float32,
    ) -> None:
        _check_key(key)
        if isinstance(norm, Normalizer):
            norms: dict[Key, Normalizer] = {key: norm}
        elif isinstance(norm, Mapping):
            if key is not None:
                raise StreamnormError(
                    "norm is a dict {key: Normalizer}, so it names the keys itself; "
                    "leave key=None"
                )
            if not norm:
                raise StreamnormError("norm is an empty dict; give at least one {key: Normalizer}")
            norms = {}
            for k, n in norm.items():
                if isinstance(k, bool) or not isinstance(k, (int, str)):
                    raise StreamnormError(f"normalizer keys must be int or str, got {k!r}")
                if not isinstance(n, Normalizer):
                    raise StreamnormError(
                        f"norm[{k!r}] is a {type(n).__name__}, not a streamnorm.Normalizer"
                    )
                norms[k] = n
        else:
            raise StreamnormError(
                f"norm must be a streamnorm.Normalizer or a dict of them, got "
                f"{type(norm).__name__}"
            )
        self.device = _default_device() if device is None else _resolve_device(device)
        self.dtype = _float_out(dtype)
        # scale/shift cross to the device here, once, on the default stream
        self.normalizers: dict[Key, Normalizer] = {k: n.to(self.device) for k, n in norms.items()}
        self.copy_stream = None
        self.compute_stream = None
        # (copy event, pinned host tensors it reads), oldest first
        self._host_in_flight: deque[tuple[Any, list[torch.Tensor]]] = deque()
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                self.copy_stream = torch.cuda.Stream(device=self.device)
                self.compute_stream = torch.cuda.Stream(device=self.device)

    @property
    def stream(self) -> Any:
        """The compute stream, whose event the consumer waits on (``None`` off CUDA)."""
        return self.compute_stream

    def _normalize(self, batch: Any) -> Any:
        for k, norm in self.normalizers.items():
            batch = replace(batch, k, norm(pick(batch, k), self.dtype))
        return batch

    def _copy(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device == self.device else self._copy(t)

    def _read_by_compute(self, moved: Any) -> list[torch.Tensor]:
        """The device tensors that the normalization reads (those at the normalizers' keys)."""
        return [t for k in self.normalizers for t in _each_tensor(pick(moved, k))
                if t.device.type == "cuda"]

    def _release_copied_host_buffers(self) -> None:
        # events of one stream complete in order: stop at the first still pending
        while self._host_in_flight and self._host_in_flight[0][0].query():
            self._host_in_flight.popleft()

    def apply(self, batch: Any) -> Any:
        """Move and normalize synchronously (the CPU path)."""
        return self._normalize(move_to_device(batch, self.device))

    def _wait_for_producers(self, batch: Any, ready: Mapping[torch.device, Any] | None) -> None:
        if ready is not None:
            for event in ready.values():
                self.copy_stream.wait_event(event)
        else:
            for dev in _gpu_devices(batch):
                self.copy_stream.wait_stream(torch.cuda.current_stream(dev))

    def launch(self, batch: Any, ready: Mapping[torch.device, Any] | None = None) -> tuple[Any, Any]:
        """Enqueue the copies of ``batch`` on the copy stream and its normalization on the
        compute stream (CUDA); return ``(batch on the device, event after its normalization)``.

        The compute stream waits on an event recorded after the copies, never
        on the copy stream as a whole, so the next batch's copies overlap
        this batch's normalization. Inputs already on a GPU are read only
        after the work that wrote them: the copy stream waits for the events
        in ``ready`` (one per GPU, see :func:`_producer_events`) or, when
        ``ready`` is None, for the stream current on their device in the
        calling thread; the compute stream inherits that wait through the
        copy event. Every device tensor is ``record_stream``-ed on each of our
        streams that reads it without having allocated it; pinned host
        tensors are held until the copy event has completed.
        """
        copy, compute = self.copy_stream, self.compute_stream
        with torch.cuda.device(self.device):
            self._release_copied_host_buffers()
            self._wait_for_producers(batch, ready)
            with torch.cuda.stream(copy):
                moved = _map_tensors(batch, self._to_device)
            copied = copy.record_event()
            inputs = list(_each_tensor(batch))
            for t in inputs:
                if t.device.type == "cuda" and t.device != self.device:
                    # a peer copy reads it; the producer may free it as soon as we return
                    t.record_stream(copy)
            pinned = [t for t in inputs if t.device.type == "cpu" and t.is_pinned()]
            if pinned:
                self._host_in_flight.append((copied, pinned))
            compute.wait_event(copied)
            with torch.cuda.stream(compute):
                out = self._normalize(moved)
            for t in self._read_by_compute(moved):
                # allocated on the copy stream (or by the producer) and dropped from the
                # batch once normalized: not to be reused before the compute stream read it
                t.record_stream(compute)
            done = compute.record_event()
        return out, done

    def hand_off(self, launched: tuple[Any, Any]) -> Any:
        """Make the caller's current stream wait for a launched batch; return the batch."""
        out, done = launched
        consumer = torch.cuda.current_stream(self.device)
        consumer.wait_event(done)
        for t in _each_tensor(out):
            if t.device.type == "cuda":
                # the allocator must not recycle these blocks (allocated on the copy or
                # compute stream) until the consumer's work on them is done
                t.record_stream(consumer)
        self._release_copied_host_buffers()
        return out


class DeviceLoader:
    """Iterate CPU batches as device batches, normalized on the device.

    Parameters
    ----------
    loader : iterable
        Yields CPU batches: a tensor, a tuple/list or dict of them, nested;
        numeric numpy arrays are taken as tensors.
    norm : Normalizer or dict
        The map applied to the element at ``key``; or ``{key: Normalizer}``
        to normalize several elements (then leave ``key`` out).
    device : str or torch.device, optional
        Default: the current CUDA device when CUDA is available, else the CPU.
        A device index (``"cuda:1"``) is honoured.
    key : int or str, optional
        The element to normalize: an int for tuple/list batches
        (``(images, labels)`` -> ``0``), a str for dicts, ``None`` when the
        batch is a bare tensor.
    dtype : torch.dtype
        Output dtype of the normalized tensors (float32, float16, bfloat16,
        float64).
    pin_memory : bool, optional
        CUDA only. ``None`` or ``True`` (default): a background thread pins
        what the loader left unpinned, numpy arrays included (a custom
        ``collate_fn`` under ``DataLoader(pin_memory=True)`` can return
        them); tensors already pinned pass through. ``False``: never pin
        (copies from pageable memory are synchronous).

    Notes
    -----
    On CUDA, every batch is handed over to the stream that is current on
    ``device`` in the thread that calls ``next()`` (iterates): train on the
    batch on that stream, or iterate inside ``with torch.cuda.stream(s):`` to
    receive it on a stream ``s`` of your own. Tensors that the source yields
    already on a GPU are read after the work queued on the stream current on
    their device in the thread that iterates the source (the pin thread, or
    the caller of ``next()`` with ``pin_memory=False``) when it yielded them.
    Copies run on :attr:`copy_stream`, the normalization on :attr:`stream`
    (the compute stream), both created once per ``DeviceLoader`` and linked
    by events, so the copy of batch ``k + 1`` overlaps the normalization of
    batch ``k`` (see :mod:`streamnorm.device`).

    ``len(device_loader)`` is ``len(loader)``. Attributes the wrapper lacks
    (``dataset``, ``sampler``, ``batch_size``...) are read from ``loader``.

    Examples
    --------
    >>> import torch, streamnorm as sn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> images = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    >>> loader = DataLoader(TensorDataset(images, torch.arange(8)), batch_size=4)
    >>> norm = sn.Normalizer.from_range(0, 255)
    >>> for x, y in sn.DeviceLoader(loader, norm, device="cpu", key=0):
    ...     print(x.dtype, x.shape, float(x.max()) <= 1.0, y.tolist())
    torch.float32 torch.Size([4, 3, 4, 4]) True [0, 1, 2, 3]
    torch.float32 torch.Size([4, 3, 4, 4]) True [4, 5, 6, 7]
    """

    def __init__(
        self,
        loader: Iterable[Any],
        norm: Normalizer | Mapping[Key, Normalizer],
        device: Any = None,
        key: Key = None,
        *,
        dtype: torch.dtype = torch.float32,
        pin_memory: bool | None = None,
    ) -> None:
        if not hasattr(loader, "__iter__"):
            raise StreamnormError(
                f"loader must be an iterable of batches (a DataLoader, a list...), got "
                f"{type(loader).__name__}"
            )
        if pin_memory not in (None, True, False):
            raise StreamnormError(f"pin_memory must be None, True or False, got {pin_memory!r}")
        self.loader = loader
        self._stage = DeviceStage(norm, device, key, dtype)
        self._pin_memory = pin_memory is not False

    @property
    def device(self) -> torch.device:
        return self._stage.device

    @property
    def dtype(self) -> torch.dtype:
        return self._stage.dtype

    @property
    def normalizers(self) -> dict[Key, Normalizer]:
        """``{key: Normalizer}``, each already on :attr:`device`."""
        return self._stage.normalizers

    @property
    def stream(self) -> torch.cuda.Stream | None:
        """The compute stream: normalization runs there (``None`` off CUDA)."""
        return self._stage.compute_stream

    @property
    def copy_stream(self) -> torch.cuda.Stream | None:
        """The stream host-to-device copies run on (``None`` off CUDA)."""
        return self._stage.copy_stream

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        loader = self.__dict__.get("loader")
        if loader is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(loader, name)

    def __iter__(self) -> Iterator[Any]:
        if self._stage.stream is None:
            return map(self._stage.apply, self.loader)
        return self._iter_cuda()

    def _iter_cuda(self) -> Iterator[Any]:
        stage = self._stage
        source = iter(self.loader)  # created here, in the caller's thread (worker setup)
        pinner = _pinning(source, stage.device) if self._pin_memory else None
        # (batch, events marking the work that wrote its GPU tensors; None: the current streams)
        batches = iter(pinner) if pinner is not None else ((b, None) for b in source)
        try:
            pending = None
            for batch, ready in batches:
                launched = stage.launch(batch, ready)  # batch k+1 in flight ...
                if pending is not None:
                    yield stage.hand_off(pending)  # ... while k is used
                pending = launched
            if pending is not None:
                yield stage.hand_off(pending)
        finally:
            if pinner is not None:
                pinner.close(timeout=30)

    def __repr__(self) -> str:
        keys = list(self.normalizers)
        return f"DeviceLoader(device={str(self.device)!r}, keys={keys}, dtype={self.dtype})"
