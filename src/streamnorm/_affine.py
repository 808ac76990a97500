"""How a normalizer's map is evaluated: ``y = (x - center) * scale + offset``.

Every mode is the affine map ``y = x * scale + shift`` with
``shift = offset - center * scale``, but evaluating it in that form loses
what the user asked for. ``x * scale`` and ``shift`` are both about
``|center| * scale`` large and cancel: data whose ``|mean|`` is 1e8 times its
std keeps only eight float64 digits. And ``shift`` rounded on its own to
float32 moves the range's low end off 0 (to -3e-8). Subtracting the center
first is exact for inputs near it (Sterbenz), so the result keeps the compute
dtype's relative precision and the range minimum maps to the low end exactly.

:class:`AffineMap` holds the map in float64 with what its evaluation needs
(the part of the center below float64's resolution, the range that must stay
inside its bounds); :meth:`AffineMap.params` rounds it to a compute dtype;
:func:`evaluate` applies it with torch ops, on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

__all__ = ["AffineMap", "evaluate"]

_NUMPY_FLOAT = {torch.float32: np.float32, torch.float64: np.float64}


def _frozen(values: np.ndarray | None) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.array(values, dtype=np.float64, copy=True).reshape(-1)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class AffineMap:
    """``y = (x - center - center_lo) * scale + offset`` per feature, in float64.

    Parameters
    ----------
    center, scale, offset : numpy.ndarray
        float64 ``[F]``.
    center_lo : numpy.ndarray, optional
        The center's part below float64's resolution (a double-double
        center): an exact mean of integers keeps its digits this way.
    upper : numpy.ndarray, optional
        For range maps, whose ``center`` is the range's low end: its high end.
        Every input in ``[center, upper]`` maps into
        ``[offset, offset + width]`` in every compute and output dtype.
    width : float, optional
        ``high - low`` of a range map's target interval.
    upper_is_bound : bool
        ``False`` (statistics): ``upper`` is a value of the data, which the
        compute dtype rounds to nearest as it rounds the input. ``True`` (a
        given range): a bound; inputs the compute dtype holds exactly stay
        at or below its rounding down, so the scale need not shrink to the
        rounding up (see :meth:`params`).
    clip : (float, float), optional
        The output is clamped to ``[low, high]`` (``mode="quantile",
        clip=True``: ``(-1, 1)``); NaN stays NaN. The inverse map does not
        clip: values inside the interval go back exactly (to rounding), values
        clipped to a bound go back to that bound's preimage.

    Examples
    --------
    >>> import numpy as np
    >>> m = AffineMap(np.array([10.0]), np.array([0.5]), np.array([-1.0]))
    >>> m.affine()
    (array([0.5]), array([-6.]))
    >>> m.inverse().affine()
    (array([2.]), array([12.]))
    """

    center: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    center_lo: np.ndarray | None = None
    upper: np.ndarray | None = None
    width: float | None = None
    upper_is_bound: bool = False
    clip: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("center", "scale", "offset", "center_lo", "upper"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        if (self.upper is None) != (self.width is None):
            raise ValueError("upper and width go together")
        if self.clip is not None:
            low, high = (float(v) for v in self.clip)
            if not low < high:
                raise ValueError(f"clip needs low < high, got {self.clip}")
            object.__setattr__(self, "clip", (low, high))

    @property
    def size(self) -> int:
        return int(self.scale.size)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """The documented form: float64 ``scale`` and ``shift = offset - center * scale``."""
        center = self.center if self.center_lo is None else self.center + self.center_lo
        with np.errstate(invalid="ignore", over="ignore"):  # the Normalizer refuses non-finite
            shift = self.offset - center * self.scale
        shift.setflags(write=False)
        return self.scale, shift

    def inverse(self) -> AffineMap:
        """``x = (y - offset) / scale + center``, the same form again (never clipped)."""
        return AffineMap(self.offset, 1.0 / self.scale, self.center)

    def params(
        self, dtype: torch.dtype, exact_inputs: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(center, scale, offset)`` rounded to the compute ``dtype`` (float32 or float64).

        ``exact_inputs``: the inputs convert to ``dtype`` exactly (uint8 or
        float16 to float32, say), so a bound ``upper`` may be rounded down.

        A range map's center is a value of the data, which the input rounds
        onto exactly as the center does, so it is rounded alone (the minimum
        still gives exactly ``offset``) and its scale is lowered by an ulp
        where the rounded maximum would overshoot ``offset + width``. Any
        other center is a statistic: what rounding it drops is added back
        through ``offset`` (where it is small), unless that is below half an
        ulp of 1 in ``dtype`` for every feature.
        """
        kind = _NUMPY_FLOAT[dtype]
        with np.errstate(over="ignore", under="ignore"):  # Normalizer checks what fits
            center = self.center.astype(kind)
            scale = self.scale.astype(kind)
        if self.upper is not None:
            offset = self.offset.astype(kind)
            upper = self.upper.astype(kind)
            if self.upper_is_bound and exact_inputs:  # the largest value within the bound
                above = upper.astype(np.float64) > self.upper
                upper[above] = np.nextafter(upper[above], kind(-np.inf))
            return center, _fit_scale(center, scale, offset, upper, float(self.width)), offset
        dropped = self.center - center.astype(np.float64)  # exact: center is its rounding
        if self.center_lo is not None:
            dropped = dropped + self.center_lo
        correction = dropped * self.scale
        if np.all(np.abs(correction) <= np.finfo(kind).eps / 2):
            # below half an ulp of the output's unit, under the arithmetic's own
            # rounding: not worth a pass over the batch
            correction = 0.0
        return center, scale, (self.offset - correction).astype(kind)


def _overshoots(span: np.ndarray, scale: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Whether ``span * scale + low`` exceeds ``high``, evaluated in two steps or fused.

    Everything is in the dtype of ``span`` (float32 or float64): torch's CPU
    kernels round the product, then the sum; a fused multiply-add (accelerator
    kernels) rounds once.
    """
    kind = span.dtype.type
    if kind is np.float32:
        exact = span.astype(np.float64) * scale.astype(np.float64)  # 24 x 24 bits: exact
        two_step = exact.astype(np.float32) + low
        fused = (exact + low.astype(np.float64)).astype(np.float32)  # exact sum, one rounding
        return (two_step > high) | (fused > high)
    product = span * scale
    two_step = product + low
    over = two_step > high
    # A fused result can differ only where the two-step one reaches high.
    for i in np.flatnonzero((two_step >= high) & ~over):
        exact = Fraction(float(span[i])) * Fraction(float(scale[i])) + Fraction(float(low[i]))
        over[i] = float(exact) > high[i]
    return over


def _fit_scale(
    center: np.ndarray, scale: np.ndarray, offset: np.ndarray, upper: np.ndarray, width: float
) -> np.ndarray:
    """Lower ``scale`` by ulps until ``upper`` maps to at most ``offset + width``.

    Every step of the evaluation (rounding the input, ``- center``, ``* scale``,
    ``+ offset``, rounding to the output dtype) is monotone, so no input in
    ``[center, upper]`` then leaves ``[offset, offset + width]``, whether the
    device fuses the multiply-add or not.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        span = upper - center  # rounded in the compute dtype, as the input is
    kind = scale.dtype.type
    high = offset + kind(width)  # 0 + 1 and -1 + 2: exact
    scale = scale.copy()
    over = _overshoots(span, scale, offset, high)
    # Inputs rounded to float32 (large integers) can widen the span by many
    # ulps of the scale: start again from width / span there, then step down.
    scale[over] = np.minimum(scale[over], (width / span[over].astype(np.float64)).astype(kind))
    for _ in range(4):  # one ulp is enough; a few guard against double ties
        over = _overshoots(span, scale, offset, high)
        if not over.any():
            return scale
        scale[over] = np.nextafter(scale[over], kind(0))
    raise AssertionError(f"no scale keeps the range: span {span[over]}, scale {scale[over]}")


def evaluate(
    x: torch.Tensor,
    center: torch.Tensor | None,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    out_dtype: torch.dtype,
    compute: torch.dtype,
    out: torch.Tensor | None = None,
    clip: tuple[float, float] | None = None,
) -> torch.Tensor:
    """``(x - center) * scale + offset`` computed in ``compute``, rounded once to ``out_dtype``.

    ``center``/``offset`` of ``None`` are zero and skipped. ``clip``:
    the result is clamped to ``[low, high]`` in ``out_dtype`` (bounds such as
    -1 and 1 that every float dtype holds exactly; rounding to ``out_dtype``
    is monotone, so clamping after it is clamping before it). The parameters are
    ``compute`` tensors already shaped to broadcast against ``x`` with at
    least its rank, so that type promotion gives ``compute`` whatever ``x``'s
    dtype. The arithmetic is the same on every device; only its fusion differs.

    Examples
    --------
    >>> import torch
    >>> c, s, o = (torch.tensor([v], dtype=torch.float64) for v in (10.0, 0.5, -1.0))
    >>> evaluate(torch.tensor([10, 14]), c, s, o, torch.float32, torch.float64).tolist()
    [-1.0, 1.0]
    >>> evaluate(torch.tensor([6, 20]), c, s, o, torch.float32, torch.float64, clip=(-1.0, 1.0)).tolist()
    [-1.0, 1.0]
    """
    if x.requires_grad and torch.is_grad_enabled() and out is None:
        # out= does not record autograd; a decoder's output keeps its graph.
        y = x.to(compute)
        y = y if center is None else y - center
        y = y * scale
        y = y if offset is None else y + offset
        y = y.to(out_dtype)
        return y if clip is None else y.clamp(*clip)
    if not _fuses(x.device):
        return _evaluate_in_cache(x, center, scale, offset, out_dtype, compute, out, clip)
    # On accelerators x is read once in its own dtype and the result written
    # once in out_dtype, in x's memory format.
    if out is None:
        out = torch.empty_like(x, dtype=out_dtype)
    tmp = x
    if center is not None:
        tmp = out if out.dtype == compute else torch.empty_like(x, dtype=compute)
        torch.sub(x, center, out=tmp)
    if offset is None:
        torch.mul(tmp, scale, out=out)
    else:
        torch.addcmul(offset, tmp, scale, out=out)
    return out if clip is None else out.clamp_(*clip)


def _evaluate_in_cache(
    x: torch.Tensor,
    center: torch.Tensor | None,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    out_dtype: torch.dtype,
    compute: torch.dtype,
    out: torch.Tensor | None,
    clip: tuple[float, float] | None = None,
) -> torch.Tensor:
    """The CPU evaluation: convert, then in-place passes over cache-sized slabs.

    torch's CPU kernels vectorize neither mixed dtypes nor a broadcast
    ``addcmul``, and broadcast slowly along a short innermost axis (NHWC's 3
    channels). So ``x`` is viewed in memory order as rows of at least
    ``_ROW`` elements with the parameters tiled along them, converted once,
    and each step is its own vectorized pass over a slab that stays in cache.
    """
    result = torch.empty_like(x, dtype=out_dtype) if out is None else out
    params = [center, scale, offset]
    views = _memory_order_views(x, result, params)
    if views is None:  # not one dense block: torch's broadcasting, in one slab
        xv, rv, pv = x.unsqueeze(0), result.unsqueeze(0), [None if p is None else p.unsqueeze(0)
                                                             for p in params]
    else:
        xv, rv, pv = views
    rows = max(1, _SLAB // max(xv[0].numel(), 1))
    for xs, rs in zip(xv.split(rows), rv.split(rows)):
        tmp = rs if rs.dtype == compute else torch.empty_like(xs, dtype=compute)
        tmp.copy_(xs)
        if pv[0] is not None:
            tmp.sub_(pv[0])
        tmp.mul_(pv[1])
        if pv[2] is not None:
            tmp.add_(pv[2])
        if tmp is not rs:
            rs.copy_(tmp)
        if clip is not None:
            rs.clamp_(*clip)
    return result


def _memory_order_views(
    x: torch.Tensor, result: torch.Tensor, params: list[torch.Tensor | None]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]] | None:
    """``x`` and ``result`` as contiguous ``(slabs, ...)`` views in memory order, and the params to match.

    ``None`` when ``x`` is not one dense block or ``result`` is laid out otherwise.
    """
    if x.ndim == 0 or x.numel() == 0 or result.stride() != x.stride():
        return None
    perm = sorted(range(x.ndim), key=lambda d: -x.stride(d))
    xp, rp = x.permute(perm), result.permute(perm)
    if not xp.is_contiguous():
        return None
    full = [None if p is None else p.reshape((1,) * (x.ndim - p.ndim) + tuple(p.shape)).permute(perm)
            for p in params]
    sizes = list(xp.shape)
    varying = [d for d in range(x.ndim) if any(p is not None and p.shape[d] > 1 for p in full)]
    split = x.ndim  # sizes[split:] is one row, at least _ROW elements where x has them
    while split > 0 and math.prod(sizes[split:]) < _ROW:
        split -= 1
    if varying and varying[0] < split:
        # the feature axis is outside the row (NCHW): (before, features, row) with (1, F, 1)
        q = varying[0]
        shape = (math.prod(sizes[:q]), sizes[q], math.prod(sizes[q + 1 :]))
        pv = [None if p is None else p.reshape(1, shape[1], 1) for p in full]
    else:
        # the row holds the feature axis (NHWC) or nothing varies: tile the params along it
        shape = (math.prod(sizes[:split]), math.prod(sizes[split:]))
        pv = [None if p is None else p[(0,) * split].expand(sizes[split:]).reshape(1, shape[1])
              for p in full]
    return xp.reshape(shape), rp.reshape(shape), pv


#: Elements per CPU slab (1 MiB of float32: within a typical L2 cache) and
#: the fewest a vectorized row holds.
_SLAB = 1 << 18
_ROW = 256


def _fuses(device: torch.device) -> bool:
    """Whether ``device`` evaluates in fused passes that read ``x`` in its own dtype."""
    return device.type != "cpu"
