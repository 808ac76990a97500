"""How a batch enters the accumulator: one native numpy view, and the path its dtype takes.

Byte order, ndarray subclasses (``np.matrix``, memmaps), masked arrays' data
and torch tensors (bfloat16 read as float32) are settled here, once, for
every caller: :class:`~streamnorm.accumulate.StatsAccumulator` and the sparse
path (:mod:`streamnorm._sparse`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import DTypeError, StreamnormError

__all__ = ["as_array", "plain", "native", "classify", "INT_KIND", "FLOAT_KIND", "BFLOAT16"]

INT_KIND = "int"
FLOAT_KIND = "float"
BFLOAT16 = "bfloat16"


def as_array(batch: Any, index: int) -> tuple[np.ndarray, str | None]:
    """A native-byte-order numpy view of a batch, and its dtype name when numpy has none.

    Every batch enters here, so byte order and ndarray subclasses are settled
    once for every caller (sources, nodes, the command line); the mask of a
    masked array is read by :func:`streamnorm._masks.batch_keep`.
    """
    if isinstance(batch, np.ndarray):
        return native(plain(batch)), None
    if type(batch).__module__.startswith("torch") and hasattr(batch, "detach"):
        tensor = batch.detach()
        if tensor.device.type != "cpu":
            raise StreamnormError(
                f"batch {index} is on {tensor.device}; statistics are computed on the CPU, "
                f"so accumulate before moving batches to the device (or pass batch.cpu())"
            )
        import torch

        name = None
        if tensor.dtype == torch.bfloat16:
            # numpy has no bfloat16; its values are exactly float32 values
            tensor, name = tensor.float(), BFLOAT16
        if tensor.is_conj() or tensor.is_neg():
            tensor = tensor.resolve_conj().resolve_neg()
        try:
            return tensor.numpy(), name
        except TypeError as exc:  # complex, quantized... dtypes numpy cannot hold
            raise DTypeError(f"batch {index} has unsupported dtype {tensor.dtype}: {exc}") from None
    if isinstance(batch, (int, float, bool, np.generic, list)):
        return native(np.asarray(batch)), None
    raise DTypeError(
        f"batch {index} is a {type(batch).__name__}; pass a numpy array or a CPU torch tensor "
        f"(for tuple or dict batches, say which element with key=)"
    )


def plain(batch: np.ndarray) -> np.ndarray:
    """A base-class ndarray: subclasses (matrix, memmap) reshape or index differently."""
    if isinstance(batch, np.ma.MaskedArray):
        return np.asarray(batch.data)
    return np.asarray(batch) if type(batch) is not np.ndarray else batch


def native(arr: np.ndarray) -> np.ndarray:
    """``arr`` in native byte order (the kernels read raw native words)."""
    if arr.dtype.isnative:
        return arr
    return arr.astype(arr.dtype.newbyteorder("="))


def classify(arr: np.ndarray, index: int) -> tuple[str, np.ndarray]:
    """Which path a dtype takes, and the array in the dtype the kernels read."""
    kind = arr.dtype.kind
    size = arr.dtype.itemsize
    if kind == "b":
        return INT_KIND, arr.view(np.uint8)
    if kind in "iu" and size in (1, 2, 4):
        return INT_KIND, arr
    if kind in "iu":  # 64-bit integers: exact only up to 2**53, documented
        return FLOAT_KIND, arr.astype(np.float64)
    if kind == "f":
        if size == 2:
            return FLOAT_KIND, arr.astype(np.float32)
        if size > 8:
            return FLOAT_KIND, arr.astype(np.float64)
        return FLOAT_KIND, arr
    raise DTypeError(
        f"batch {index} has dtype {arr.dtype}, which has no statistics; pass numeric data "
        f"(bool, integers or floats), e.g. decode strings or objects first"
    )
