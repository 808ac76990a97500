"""Layout strings: which axis of a batch holds the features.

A layout names each axis with one upper-case letter. ``C`` or ``F`` is the
feature axis (kept); every other letter is reduced. ``NCHW``, ``NHWC``, ``NF``,
``NCL``, ``NTHWC``, ``CHW``, ``HWC`` and ``N`` (one statistic over everything)
are the common ones; any string of distinct letters with at most one feature
letter is valid.

The reducers see every batch as a C-contiguous ``(outer, features, inner)``
array. :func:`as_reduction_view` builds that view without copying whenever the
batch is a permutation of a contiguous buffer (channels_last tensors included):
the reduced axes can be visited in memory order because every statistic is
independent of the order in which values arrive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LayoutError

__all__ = ["Layout", "parse_layout", "as_reduction_view"]

FEATURE_LETTERS = frozenset("CF")


@dataclass(frozen=True)
class Layout:
    """A parsed layout string.

    Parameters
    ----------
    text : str
        The layout, e.g. ``"NCHW"``.
    feature_axis : int or None
        Position of ``C``/``F`` in ``text``; ``None`` when every axis is reduced.

    Examples
    --------
    >>> parse_layout("NHWC").feature_axis
    3
    >>> parse_layout("N").feature_axis is None
    True
    """

    text: str
    feature_axis: int | None

    @property
    def ndim(self) -> int:
        return len(self.text)

    def check_rank(self, ndim: int, what: str = "batch") -> None:
        """Raise :class:`LayoutError` unless a ``ndim``-dimensional array fits."""
        if ndim != self.ndim:
            raise LayoutError(
                f"{what} has {ndim} dimension(s) but layout {self.text!r} names {self.ndim}; "
                f"pass the layout that matches your batches (e.g. 'NCHW' for image batches, "
                f"'CHW' for single images, 'NF' for tables)"
            )


def parse_layout(layout: str | Layout) -> Layout:
    """Parse and validate a layout string.

    Raises
    ------
    LayoutError
        For an empty string, characters other than upper-case letters,
        repeated letters or more than one feature letter.
    """
    if isinstance(layout, Layout):
        return layout
    if not isinstance(layout, str) or not layout:
        raise LayoutError(f"layout must be a non-empty string such as 'NCHW', got {layout!r}")
    if not all("A" <= ch <= "Z" for ch in layout):
        raise LayoutError(
            f"layout {layout!r} must consist of upper-case letters, one per axis (e.g. 'NCHW')"
        )
    if len(set(layout)) != len(layout):
        raise LayoutError(f"layout {layout!r} repeats a letter; each axis needs its own letter")
    feature_positions = [i for i, ch in enumerate(layout) if ch in FEATURE_LETTERS]
    if len(feature_positions) > 1:
        raise LayoutError(
            f"layout {layout!r} has {len(feature_positions)} feature axes; use one 'C' or 'F'"
        )
    return Layout(layout, feature_positions[0] if feature_positions else None)


def as_reduction_view(array: np.ndarray, layout: Layout) -> np.ndarray:
    """View ``array`` as C-contiguous ``(outer, features, inner)``.

    Axes are first put in memory order (largest stride first), so a
    channels_last or otherwise permuted contiguous buffer is viewed, not
    copied. Only arrays that are no permutation of a contiguous buffer (slices
    with gaps, negative strides) are copied.

    Examples
    --------
    >>> x = np.zeros((2, 3, 4, 5), np.uint8)
    >>> as_reduction_view(x, parse_layout("NCHW")).shape
    (2, 3, 20)
    >>> as_reduction_view(x.transpose(0, 2, 3, 1), parse_layout("NHWC")).shape
    (2, 3, 20)
    """
    layout.check_rank(array.ndim)
    if array.ndim == 0:
        return array.reshape(1, 1, 1)
    feature_axis = layout.feature_axis
    # Stable sort of axes by decreasing stride; size-1 axes have arbitrary
    # strides, so they go wherever they do not break contiguity (the end).
    order = sorted(
        range(array.ndim),
        key=lambda ax: (array.shape[ax] == 1, -abs(array.strides[ax])),
    )
    permuted = array.transpose(order)
    if not permuted.flags.c_contiguous:
        permuted = np.ascontiguousarray(permuted)
    if feature_axis is None:
        return permuted.reshape(permuted.size, 1, 1)
    pos = order.index(feature_axis)
    shape = permuted.shape
    outer = int(np.prod(shape[:pos], dtype=np.int64))
    inner = int(np.prod(shape[pos + 1 :], dtype=np.int64))
    return permuted.reshape(outer, shape[pos], inner)
