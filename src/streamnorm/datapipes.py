"""Functional forms for legacy ``IterDataPipe`` pipelines.

``import streamnorm.datapipes`` registers two methods on every
``torch.utils.data.IterDataPipe`` (torchdata 0.11 dropped DataPipes; torch
still ships the base classes):

- ``dp.collect_stats(accumulator, key=None, mask_key=None)``: pass items
  through, updating the accumulator with the element at ``key`` of each (and
  the mask at ``mask_key``);
- ``dp.normalize(norm, key=None, dtype=torch.float32)``: apply a
  :class:`~streamnorm.Normalizer` to the element at ``key`` of each item.

``import streamnorm`` does not import this module: registering names on a
torch class is a side effect users opt into. New code should prefer
:mod:`streamnorm.nodes`.

Statistics are collected in the main process only: a pipe iterated inside a
DataLoader worker would feed a per-worker copy of the accumulator, so
``collect_stats`` raises there. Use it without workers, or compute the
statistics with :func:`~streamnorm.compute_stats` over the DataLoader.

Examples
--------
>>> import numpy as np, streamnorm as sn, streamnorm.datapipes
>>> from torch.utils.data.datapipes.iter import IterableWrapper
>>> acc = sn.StatsAccumulator(layout="NF")
>>> dp = IterableWrapper([np.array([[0], [2]], np.uint8), np.array([[4]], np.uint8)])
>>> _ = list(dp.collect_stats(acc))
>>> norm = sn.Normalizer.from_stats(acc.result(), "minmax")
>>> [b.ravel().tolist() for b in dp.normalize(norm)]
[[0.0, 0.5], [1.0]]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data.datapipes._decorator import functional_datapipe
from torch.utils.data.datapipes.datapipe import IterDataPipe

from .accumulate import check_mask_key, update_with_mask
from .batch import Key, pick, replace
from .device import _check_key
from .errors import StreamnormError
from .normalize import Normalizer, _float_out

__all__ = ["NormalizerIterDataPipe", "StatsCollectorIterDataPipe"]


def _check_pipe(source: Any) -> None:
    if not isinstance(source, IterDataPipe):
        raise StreamnormError(f"source must be an IterDataPipe, got {type(source).__name__}")


@functional_datapipe("collect_stats")
class StatsCollectorIterDataPipe(IterDataPipe):
    """Pass items through, feeding the element at ``key`` to ``accumulator`` (functional
    name ``collect_stats``).

    Parameters
    ----------
    source_datapipe : IterDataPipe
    accumulator : StatsAccumulator
        Updated in place, in the process iterating the pipe.
    key : int or str, optional
        The element of tuple/list (int) or dict (str) items to reduce.
    mask_key : int or str, optional
        The element of the same items holding the mask of the data at ``key``
        (bool; False skips a value, counted in ``masked_count``).
    """

    def __init__(self, source_datapipe: IterDataPipe, accumulator: Any, key: Key = None,
                 mask_key: Key = None) -> None:
        _check_pipe(source_datapipe)
        if not callable(getattr(accumulator, "update", None)):
            raise StreamnormError(
                f"accumulator must be a streamnorm.StatsAccumulator, got {type(accumulator).__name__}"
            )
        _check_key(key)
        check_mask_key(key, mask_key)
        self.source_datapipe = source_datapipe
        self.accumulator = accumulator
        self.key = key
        self.mask_key = mask_key

    def __iter__(self) -> Iterator[Any]:
        if torch.utils.data.get_worker_info() is not None:
            raise StreamnormError(
                "collect_stats is iterated inside a DataLoader worker, where each worker would "
                "update its own copy of the accumulator; iterate the pipe without workers or use "
                "sn.compute_stats(loader, key=...) in the main process"
            )
        for item in self.source_datapipe:
            update_with_mask(self.accumulator, item, self.key, self.mask_key)
            yield item

    def __len__(self) -> int:
        return len(self.source_datapipe)


@functional_datapipe("normalize")
class NormalizerIterDataPipe(IterDataPipe):
    """Normalize the element at ``key`` of every item (functional name ``normalize``).

    Parameters
    ----------
    source_datapipe : IterDataPipe
    norm : Normalizer
    key : int or str, optional
    dtype : torch.dtype
        Output dtype (float32 by default).
    """

    def __init__(
        self,
        source_datapipe: IterDataPipe,
        norm: Normalizer,
        key: Key = None,
        dtype: Any = torch.float32,
    ) -> None:
        _check_pipe(source_datapipe)
        if not isinstance(norm, Normalizer):
            raise StreamnormError(f"norm must be a streamnorm.Normalizer, got {type(norm).__name__}")
        _check_key(key)
        self.source_datapipe = source_datapipe
        self.norm = norm
        self.key = key
        self.dtype = _float_out(dtype)

    def __iter__(self) -> Iterator[Any]:
        for item in self.source_datapipe:
            yield replace(item, self.key, self.norm(pick(item, self.key), self.dtype))

    def __len__(self) -> int:
        return len(self.source_datapipe)
