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
        given range): a bound, which inputs the compute dtype holds stay below.

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

    def __post_init__(self) -> None:
        for name in ("center", "scale", "offset", "center_lo", "upper"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        if (self.upper is None) != (self.width is None):
            raise ValueError("upper and width go together")

    @property
    def size(self) -> int:
        return int(self.scale.size)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """The documented form: float64 ``scale`` and ``shift = offset - center * scale``."""
        center = self.center if self.center_lo is None else self.center + self.center_lo
        shift = self.offset - center * self.scale
        shift.setflags(write=False)
        return self.scale, shift

    def inverse(self) -> AffineMap:
        """``x = (y - offset) / scale + center``, the same form again."""
        return AffineMap(self.offset, 1.0 / self.scale, self.center)

    def params(self, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(center, scale, offset)`` rounded to the compute ``dtype`` (float32 or float64).

        A range map's center is a value of the data, which the input rounds
        onto exactly as the center does, so it is rounded alone (the minimum
        still gives exactly ``offset``) and its scale is lowered by an ulp
        where the rounded maximum would overshoot ``offset + width``. Any
        other center is a statistic: what rounding it drops is added back
        through ``offset``, where it is small.
        """
        kind = _NUMPY_FLOAT[dtype]
        center = self.center.astype(kind)
        scale = self.scale.astype(kind)
        if self.upper is not None:
            offset = self.offset.astype(kind)
            upper = self.upper.astype(kind)
            if self.upper_is_bound:  # the largest value of the dtype within the bound
                above = upper.astype(np.float64) > self.upper
                upper[above] = np.nextafter(upper[above], kind(-np.inf))
            return center, _fit_scale(center, scale, offset, upper, float(self.width)), offset
        dropped = self.center - center.astype(np.float64)  # exact: center is its rounding
        if self.center_lo is not None:
            dropped = dropped + self.center_lo
        return center, scale, (self.offset - dropped * self.scale).astype(kind)


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
) -> torch.Tensor:
    """``(x - center) * scale + offset`` computed in ``compute``, rounded once to ``out_dtype``.

    ``center``/``offset`` of ``None`` are zero and skipped. The parameters are
    ``compute`` tensors already shaped to broadcast against ``x`` with at
    least its rank, so that type promotion gives ``compute`` whatever ``x``'s
    dtype. The arithmetic is the same on every device; only its fusion differs.

    Examples
    --------
    >>> import torch
    >>> c, s, o = (torch.tensor([v], dtype=torch.float64) for v in (10.0, 0.5, -1.0))
    >>> evaluate(torch.tensor([10, 14]), c, s, o, torch.float32, torch.float64).tolist()
    [-1.0, 1.0]
    """
    if x.requires_grad and torch.is_grad_enabled() and out is None:
        # out= does not record autograd; a decoder's output keeps its graph.
        y = x.to(compute)
        y = y if center is None else y - center
        y = y * scale
        y = y if offset is None else y + offset
        return y.to(out_dtype)
    if not _fuses(x.device):
        # torch's CPU kernels vectorize neither mixed dtypes nor a fused
        # broadcast addcmul: convert once, then vectorized in-place passes.
        direct = out is not None and out.dtype == compute
        tmp = out if direct else torch.empty_like(x, dtype=compute)
        tmp.copy_(x)
        if center is not None:
            tmp.sub_(center)
        tmp.mul_(scale)
        if offset is not None:
            tmp.add_(offset)
        if direct or (out is None and out_dtype == compute):
            return tmp
        return tmp.to(out_dtype) if out is None else out.copy_(tmp)
    # On accelerators x is read once in its own dtype and the result written
    # once in out_dtype, in x's memory format.
    if out is None:
        out = torch.empty_like(x, dtype=out_dtype)
    tmp = x
    if center is not None:
        tmp = out if out.dtype == compute else torch.empty_like(x, dtype=compute)
        torch.sub(x, center, out=tmp)
    if offset is None:
        return torch.mul(tmp, scale, out=out)
    return torch.addcmul(offset, tmp, scale, out=out)


def _fuses(device: torch.device) -> bool:
    """Whether ``device`` evaluates in fused passes that read ``x`` in its own dtype."""
    return device.type != "cpu"
