"""Which values of a batch enter the statistics: masks and ``ignore_value``.

A batch's *keep* array is a bool array of the batch's shape, False where a
value is skipped. It joins three sources, in the batch's own shape (so it
follows the batch through any layout): the ``mask=`` given to
``StatsAccumulator.update`` (broadcast by numpy's rules), the mask of a numpy
masked array, and the values equal to the accumulator's ``ignore_value``.

The accumulator then reduces the batch with skipped values replaced by a
neutral value (0 for integers: it adds nothing to the exact sums; NaN for
floats, skipped by the kernels' omit path; see :mod:`streamnorm._masked_kernels`)
and corrects what that value touched (counts, min, max, the zero bin of a
histogram) from per-feature counts of the skipped values. That keeps one set
of reduction kernels for masked and unmasked batches, exact for integers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import DTypeError, MaskError, StreamnormError

__all__ = ["MaskError", "check_ignore_value", "batch_keep"]


def check_ignore_value(value: Any) -> float | int | bool | None:
    """Validate ``ignore_value``: a real, non-NaN number (or None).

    NaN is refused: NaN equals nothing, and non-finite values already have
    ``nan_policy="omit"``.

    Examples
    --------
    >>> check_ignore_value(-9999), check_ignore_value(None)
    (-9999, None)
    """
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, (bool, int, float)):
        raise StreamnormError(
            f"ignore_value must be a number (e.g. a raster's nodata value), got {type(value).__name__} {value!r}"
        )
    if isinstance(value, float) and math.isnan(value):
        raise StreamnormError(
            "ignore_value=NaN matches nothing (NaN equals no value); to skip NaNs pass "
            "nan_policy='omit' (they are then counted in nan_count)"
        )
    return value


def _ignored(arr: np.ndarray, value: float | int | bool) -> np.ndarray | None:
    """Where ``arr`` equals ``value`` in ``arr``'s own dtype; None when it cannot hold it.

    The value is compared as a value of the batch's dtype, as a raster's nodata
    is: ``0.1`` on float32 data matches ``float32(0.1)``. An integer batch
    cannot hold a fractional or out-of-range value, so nothing matches.
    """
    kind = arr.dtype.kind
    if kind == "f":
        with np.errstate(over="ignore"):
            target = arr.dtype.type(value)
        return arr == target
    if kind in "biu":
        if float(value) != math.floor(float(value)) or math.isinf(float(value)):
            return None
        v = int(value)
        if kind == "b":
            return (arr == bool(v)) if v in (0, 1) else None
        info = np.iinfo(arr.dtype)
        if not info.min <= v <= info.max:
            return None
        return arr == arr.dtype.type(v)
    return None


def _as_mask(mask: Any, shape: tuple[int, ...], index: int) -> np.ndarray:
    """``mask`` as a bool numpy array broadcast (read-only) to ``shape``."""
    if type(mask).__module__.startswith("torch") and hasattr(mask, "detach"):
        tensor = mask.detach()
        if tensor.device.type != "cpu":
            raise MaskError(f"the mask of batch {index} is on {tensor.device}; pass a CPU mask (mask.cpu())")
        mask = tensor.numpy()
    elif isinstance(mask, np.ma.MaskedArray) or not isinstance(mask, np.ndarray):
        mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise MaskError(
            f"the mask of batch {index} has dtype {mask.dtype}; a mask is bool (True keeps a value, "
            f"False skips it): pass e.g. mask != 0"
        )
    try:
        return np.broadcast_to(mask, shape)
    except ValueError:
        raise MaskError(
            f"the mask of batch {index} has shape {tuple(mask.shape)}, which does not broadcast to the "
            f"batch's shape {tuple(shape)}; give it the batch's shape or size-1 axes where it repeats "
            f"(e.g. (N, 1, H, W) for an NCHW batch)"
        ) from None


def batch_keep(batch: Any, arr: np.ndarray, mask: Any, ignore_value: Any, index: int) -> np.ndarray | None:
    """The keep array of one batch (False = skip), or None when every value is kept.

    ``batch`` is what the caller passed (a masked array carries its mask),
    ``arr`` its plain numpy values.
    """
    keep = None if mask is None else _as_mask(mask, arr.shape, index)
    if isinstance(batch, np.ma.MaskedArray) and batch.mask is not np.ma.nomask:
        valid = ~np.ma.getmaskarray(batch)
        keep = valid if keep is None else keep & valid
    if ignore_value is not None:
        if arr.dtype.kind not in "biuf":
            raise DTypeError(f"batch {index} has dtype {arr.dtype}, which has no statistics")
        hit = _ignored(arr, ignore_value)
        if hit is not None:
            keep = ~hit if keep is None else keep & ~hit
    if keep is None or keep.all():
        return None
    return keep
