"""``torchdata.nodes`` stages: collect statistics in a pipeline, normalize on the device.

:class:`CollectStats` is a pass-through node that feeds every item (or the
element at ``key``) to a :class:`~streamnorm.StatsAccumulator`. Its state
carries both the source's state and the accumulator's, so a pipeline
checkpointed mid-epoch and restored counts every item exactly once.

:class:`DeviceNormalize` is the node form of :class:`~streamnorm.DeviceLoader`:
it moves each batch to the device and normalizes it there. Place it after
``torchdata.nodes.PinMemory`` where CUDA is present; ``PinMemory`` fails
without CUDA, so build it only there::

    node = Batcher(ParallelMapper(IterableWrapper(range(n)), decode, num_workers=4), 64)
    if torch.cuda.is_available():
        node = PinMemory(node)
    node = DeviceNormalize(node, norm, device="cuda" if torch.cuda.is_available() else "cpu",
                           key="image")
    loader = Loader(node)

Accumulate statistics in the main process: a ``CollectStats`` that runs
inside a DataLoader worker (a copy per worker, each with a fragment of the
data) raises an error instead of silently losing data.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torchdata.nodes import BaseNode

from .accumulate import check_mask_key, update_with_mask
from .batch import Key
from .device import DeviceStage, _check_key
from .errors import StreamnormError
from .normalize import Normalizer

__all__ = ["CollectStats", "DeviceNormalize"]


def _check_node(node: Any, what: str) -> None:
    if not isinstance(node, BaseNode):
        raise StreamnormError(
            f"{what} must be a torchdata.nodes.BaseNode, got {type(node).__name__}; wrap "
            f"iterables with torchdata.nodes.IterableWrapper"
        )


class CollectStats(BaseNode):
    """Pass items through unchanged while accumulating their statistics.

    Parameters
    ----------
    source_node : torchdata.nodes.BaseNode
        Yields batches (numpy arrays or CPU tensors, or tuples/dicts of them).
    accumulator : StatsAccumulator
        Updated in place with the element at ``key`` of every item. A restore
        (``reset(state)``) loads the checkpointed state back into this same
        object.
    key : int or str, optional
        The element of tuple/list (int) or dict (str) items to reduce.
    mask_key : int or str, optional
        The element of the same items holding the mask of the data at
        ``key`` (bool; False skips a value, counted in ``masked_count``).
    max_passes : int, optional
        Stop updating after this many complete passes over the source (``1``:
        collect during the first epoch only, then pass through). ``None``
        (default): update on every item of every pass.

    Notes
    -----
    A pass is complete when the source raises ``StopIteration``; the state
    records whether the current pass has ended, so the ``StopIteration`` that
    a restored ``Loader`` meets again when it probes a state taken at the end
    of an epoch is not counted as a second pass.

    Items enter the accumulator when this node hands them downstream. With a
    ``Prefetcher`` *downstream*, items are counted when prefetched, and a
    checkpoint taken through the prefetcher still restores exactly once
    (its snapshots hold this node's state per item).

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> from torchdata.nodes import IterableWrapper, Loader
    >>> batches = [np.full((2, 3), i, np.uint8) for i in range(4)]
    >>> acc = sn.StatsAccumulator(layout="NF")
    >>> loader = Loader(sn.nodes.CollectStats(IterableWrapper(batches), acc))
    >>> it = iter(loader)
    >>> _ = next(it); _ = next(it)
    >>> state = loader.state_dict()            # mid-epoch checkpoint
    >>> acc2 = sn.StatsAccumulator(layout="NF")
    >>> fresh = Loader(sn.nodes.CollectStats(IterableWrapper(batches), acc2))
    >>> fresh.load_state_dict(state)
    >>> _ = list(fresh)                         # the remaining two batches
    >>> acc2.result().count.tolist(), acc2.result().mean.tolist()
    ([8, 8, 8], [1.5, 1.5, 1.5])
    """

    SOURCE_KEY = "source"
    ACCUMULATOR_KEY = "accumulator"
    PASSES_KEY = "completed_passes"
    ENDED_KEY = "pass_ended"

    def __init__(
        self,
        source_node: BaseNode,
        accumulator: Any,
        key: Key = None,
        *,
        max_passes: int | None = None,
        mask_key: Key = None,
    ) -> None:
        super().__init__()
        _check_node(source_node, "source_node")
        for method in ("update", "state_dict", "load_state_dict"):
            if not callable(getattr(accumulator, method, None)):
                raise StreamnormError(
                    f"accumulator must be a streamnorm.StatsAccumulator (it has no {method}()), "
                    f"got {type(accumulator).__name__}"
                )
        _check_key(key)
        check_mask_key(key, mask_key)
        if max_passes is not None and (
            isinstance(max_passes, bool) or not isinstance(max_passes, int) or max_passes < 1
        ):
            raise StreamnormError(f"max_passes must be None or an int >= 1, got {max_passes!r}")
        self.source = source_node
        self.accumulator = accumulator
        self.key = key
        self.mask_key = mask_key
        self.max_passes = max_passes
        self._passes = 0
        self._pass_ended = False

    @property
    def completed_passes(self) -> int:
        """Complete passes over the source so far."""
        return self._passes

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if torch.utils.data.get_worker_info() is not None:
            raise StreamnormError(
                "CollectStats runs inside a DataLoader worker, where each worker would hold a "
                "fragment of the statistics; collect in the main process (put CollectStats "
                "after the DataLoader, or use sn.compute_stats(loader, key=...))"
            )
        if initial_state is None:
            self._pass_ended = False
            self.source.reset(None)
            return
        try:
            source_state = initial_state[self.SOURCE_KEY]
            acc_state = initial_state[self.ACCUMULATOR_KEY]
            passes = int(initial_state[self.PASSES_KEY])
            # states written before the flag existed were all taken mid-pass or unflagged
            ended = initial_state.get(self.ENDED_KEY, False)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise StreamnormError(
                f"not a CollectStats state: expected the keys {self.SOURCE_KEY!r}, "
                f"{self.ACCUMULATOR_KEY!r}, {self.PASSES_KEY!r} and {self.ENDED_KEY!r}"
            ) from None
        if not isinstance(ended, bool) or passes < 0:
            raise StreamnormError(
                f"not a CollectStats state: {self.PASSES_KEY!r} must be an int >= 0 and "
                f"{self.ENDED_KEY!r} a bool, got {passes!r} and {ended!r}"
            )
        self.source.reset(source_state)
        self.accumulator.load_state_dict(copy.deepcopy(acc_state))
        self._passes = passes
        self._pass_ended = ended

    def next(self) -> Any:
        try:
            item = next(self.source)
        except StopIteration:
            if not self._pass_ended:  # count each pass once, however often its end is probed
                self._pass_ended = True
                self._passes += 1
            raise
        if self.max_passes is None or self._passes < self.max_passes:
            update_with_mask(self.accumulator, item, self.key, self.mask_key)
        return item

    def get_state(self) -> dict[str, Any]:
        return {
            self.SOURCE_KEY: self.source.state_dict(),
            # a snapshot: the live accumulator keeps changing after this
            self.ACCUMULATOR_KEY: copy.deepcopy(self.accumulator.state_dict()),
            self.PASSES_KEY: self._passes,
            self.ENDED_KEY: self._pass_ended,
        }


class DeviceNormalize(BaseNode):
    """Move each batch to ``device`` and normalize the element at ``key`` there.

    The node form of :class:`~streamnorm.DeviceLoader`, with the same
    arguments. On CUDA the copies run on a copy stream and the normalization
    on a compute stream, both created with the node and linked by events, one
    batch ahead, and are handed over stream-safely;
    put ``torchdata.nodes.PinMemory`` upstream (only where CUDA exists) so
    that copies are asynchronous (it pins tensors, not numpy arrays). On the
    CPU each batch is normalized by the thread that pulls it from this node.

    Streams (CUDA): each batch is handed over to the stream that is current
    on ``device`` in the thread that calls ``next()`` on this node (the
    ``Loader``'s caller, or the thread of a ``Prefetcher`` placed after it);
    use it there, or iterate inside ``with torch.cuda.stream(s):``. Tensors
    the source yields already on a GPU are read after the work queued on the
    stream current on their device in that same thread, and are
    ``record_stream``-ed on each stream that reads them.

    The state is the source's state as of the last batch handed out, so a
    restore resumes right after it even though one more batch was in flight.

    Examples
    --------
    >>> import torch, streamnorm as sn
    >>> from torchdata.nodes import IterableWrapper, Loader
    >>> batches = [torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)] * 3
    >>> node = sn.nodes.DeviceNormalize(IterableWrapper(batches),
    ...                                 sn.Normalizer.from_range(0, 255), device="cpu")
    >>> [float(b.mean()) for b in Loader(node)]
    [1.0, 1.0, 1.0]
    """

    SOURCE_KEY = "source"

    def __init__(
        self,
        source_node: BaseNode,
        norm: Normalizer | Mapping[Key, Normalizer],
        device: Any = None,
        key: Key = None,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        _check_node(source_node, "source_node")
        self.source = source_node
        self._stage = DeviceStage(norm, device, key, dtype)
        self._pending: Any = None
        self._state: dict[str, Any] | None = None

    @property
    def device(self) -> torch.device:
        return self._stage.device

    @property
    def stream(self) -> torch.cuda.Stream | None:
        return self._stage.stream

    _END = object()

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._pending = None
        self._state = None
        if initial_state is None:
            self.source.reset(None)
        else:
            if self.SOURCE_KEY not in initial_state:
                raise StreamnormError(f"not a DeviceNormalize state: no {self.SOURCE_KEY!r} key")
            self.source.reset(initial_state[self.SOURCE_KEY])

    def _pull(self) -> Any:
        try:
            return self._stage.launch(next(self.source))
        except StopIteration:
            return self._END

    def next(self) -> Any:
        stage = self._stage
        if stage.stream is None:
            return stage.apply(next(self.source))
        if self._pending is None:
            self._pending = self._pull()
        current = self._pending
        if current is self._END:
            raise StopIteration
        self._state = self.source.state_dict()  # after `current`, before the look-ahead
        self._pending = self._pull()
        return stage.hand_off(current)

    def get_state(self) -> dict[str, Any]:
        if self._state is not None and self._pending is not None:
            return {self.SOURCE_KEY: self._state}
        return {self.SOURCE_KEY: self.source.state_dict()}
