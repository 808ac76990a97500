"""Streaming accumulation of per-feature statistics.

:class:`StatsAccumulator` takes batches (numpy arrays or CPU torch tensors of
any numeric dtype), reduces them with the numba kernels of
:mod:`streamnorm._kernels` and keeps a mergeable partial state:

- integer input (bool, 8/16/32-bit) keeps exact integer sums: the result is
  bit-identical whatever the batching, threads or merge order;
- float input (16/32/64-bit, torch bfloat16) and 64-bit integers accumulate in
  float64 about a per-feature shift, merged with Chan's update; values up to
  the largest float64 never overflow an intermediate (see :func:`streamnorm._float_moments.float_moments`).

Every batch enters through :func:`streamnorm._batch_input.as_array`: foreign byte order, ndarray
subclasses (``np.matrix``, memmaps) and masked arrays are settled there, once,
for every caller. A batch that fails leaves the state as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from . import _kernels as K
from . import _masked_kernels as MK
from . import _masks
from ._batch_input import BFLOAT16, FLOAT_KIND, INT_KIND, as_array, classify
from ._float_moments import float_moments, fresh_moments, too_wide
from ._int_moments import hist_counts, int_moments
from ._sparse import is_sparse, update_sparse
from .batch import Key, pick
from .distribution import (
    DEFAULT_QUANTILE_ERROR,
    EXACT,
    GRID,
    Distribution,
    check_quantile_error,
    count_batch,
    exact_sums,
    family,
)
from .errors import DTypeError, IncompatibleStatsError, LayoutError, NonFiniteError, StreamnormError
from .layout import as_reduction_view, parse_layout
from .stats import HISTOGRAM_BINS, Stats, chan_merge, exact_moments_array

__all__ = ["StatsAccumulator", "compute_stats", "update_with_mask", "check_mask_key"]

NAN_POLICIES = {"raise": K.POLICY_RAISE, "omit": K.POLICY_OMIT, "propagate": K.POLICY_PROPAGATE}

# Below this many bytes a batch is reduced on the calling thread: thread
# hand-off costs more than it saves.
MIN_PARALLEL_BYTES = 1 << 20
# Values per feature that pending int64 sums may absorb before they are
# flushed into exact Python integers (see the overflow notes in _kernels).
PENDING_LIMIT = {1: 1 << 46, 2: 1 << 30, 4: 1 << 30}



class _Skip:
    """What the skipped values of one batch touched, per feature.

    ``masked``: the count of skipped values. Integer batches (skipped values
    replaced by 0): ``lo`` and ``hi``, the extremes of the kept values (0 may
    not be one). Float batches: ``keep``, the uint8 keep view that the masked
    float kernels read; or, on the NaN path (some kept value is non-finite),
    ``keep`` None, the NaN stand-ins counted in the kernels' non-finite count,
    and ``entered``/``flags`` (kept non-finite values that enter under
    ``nan_policy="propagate"``, and whether they hold NaN, +inf, -inf).
    """

    def __init__(self, masked: np.ndarray) -> None:
        self.masked = masked
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None
        self.keep: np.ndarray | None = None
        self.entered: np.ndarray | None = None
        self.flags: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def _nonfinite_moments(mean: np.ndarray, m2: np.ndarray, lo: np.ndarray,
                       hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy's mean and m2 for features where non-finite values entered (``propagate``).

    min and max record exactly which entered (NaN: a NaN; -inf/+inf: that
    infinity), whatever the batching: NaN or both infinities give a NaN mean,
    one infinity gives that infinity; m2 is NaN, as ``numpy.var`` gives.
    """
    if lo.min(initial=np.inf) > -np.inf and hi.max(initial=-np.inf) < np.inf:
        return mean, m2  # only finite values entered (a NaN fails both tests)
    with np.errstate(invalid="ignore"):
        nan = np.isnan(lo) | ((lo == -np.inf) & (hi == np.inf))
        pos = ~nan & (hi == np.inf)
        neg = ~nan & (lo == -np.inf)
    mean = np.where(nan, np.nan, np.where(pos, np.inf, np.where(neg, -np.inf, mean)))
    return mean, np.where(nan | pos | neg, np.nan, m2)


def _state_problem(acc: StatsAccumulator) -> str | None:
    """What makes a loaded state impossible for any data (None when nothing does)."""
    if acc._n_batches < 0:
        return f"n_batches is {acc._n_batches}"
    a = acc._arrays
    for key in ("count", "nan_count", "masked_count"):
        if key in a and (a[key] < 0).any():
            return f"{key} is negative for feature {int(np.argmax(a[key] < 0))}"
    if not a:
        return None
    count, has = a["count"], a["count"] > 0
    if acc._kind == FLOAT_KIND:
        clean = has & (a["nan_count"] == 0)
        with np.errstate(invalid="ignore"):
            bad = (a["m2"] < 0) | (clean & (np.isnan(a["mean"]) | np.isnan(a["m2"])))
            bad |= has & (a["min"] > a["max"])
        return None if not bad.any() else f"mean, m2, min or max impossible for feature {int(np.argmax(bad))}"
    if "hist" in a:
        hist = a["hist"]
        bad = (hist < 0).any(axis=1) | (hist.sum(axis=1) != count)
        return None if not bad.any() else f"histogram does not count the values of feature {int(np.argmax(bad))}"
    if "int_sum" in a:
        for f, (n, total, squares) in enumerate(zip(count.tolist(), a["int_sum"], a["int_sumsq"])):
            lo, hi = int(a["min"][f]), int(a["max"][f])
            if n == 0:
                ok = total == 0 and squares == 0
            else:  # Cauchy-Schwarz, and the sum between count*min and count*max
                ok = lo <= hi and n * lo <= total <= n * hi and n * squares >= total * total
            if not ok:
                return f"exact sums contradict count, min and max for feature {f}"
    return None


def _keep_view(arr: np.ndarray, keep: np.ndarray, layout: Any) -> np.ndarray:
    """``keep`` as the uint8 ``(outer, features, inner)`` view that matches ``arr``'s.

    The keep array is laid out in memory as ``arr`` is (``empty_like`` keeps
    the axis order), so :func:`as_reduction_view` permutes both alike.
    """
    full = np.empty_like(arr, dtype=np.bool_)
    full[...] = keep
    return as_reduction_view(full, layout).view(np.uint8)


def _propagated(skip: _Skip, count: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                nonfinite: np.ndarray) -> tuple[np.ndarray, ...]:
    """Undo the NaNs that stood for skipped values; let kept non-finite values enter (propagate).

    The omit path counted every NaN stand-in in ``nonfinite``; under
    ``propagate`` the kept non-finite values also enter ``count`` and mark
    min/max as the kernels' propagate path does (NaN: NaN; an infinity: itself).
    """
    if skip.keep is None:  # the NaN path counted its NaN stand-ins as non-finite
        nonfinite = nonfinite - skip.masked
    if skip.entered is None:
        return count, lo, hi, nonfinite
    nan, pos, neg = skip.flags
    nan = nan | np.isnan(lo)
    lo = np.where(nan, np.nan, np.where(neg, -np.inf, lo))
    hi = np.where(nan, np.nan, np.where(pos, np.inf, hi))
    return count + skip.entered, lo, hi, nonfinite


def _empty_union(a: tuple[int, np.dtype] | None, b: tuple[int, np.dtype]) -> tuple[int, np.dtype]:
    """Features and dtype that empty batches ``a`` and ``b`` together report."""
    return b if a is None else (b[0], np.promote_types(a[1], b[1]))


def _bin_offset(dtype: np.dtype) -> int:
    """Value held by histogram bin 0 for 8-bit ``dtype`` (as :attr:`Stats.histogram_offset`)."""
    return -128 if dtype == np.int8 else 0


def _histogram_offset(a: np.dtype, b: np.dtype) -> int | None:
    """Bin-0 value of one 256-bin histogram of 8-bit dtypes ``a`` and ``b`` together.

    bool fits both uint8's and int8's bins; int8 and uint8 together span
    -128..255, which no 256 bins hold, hence None.
    """
    kinds = {a.kind, b.kind}
    if kinds >= {"i", "u"}:
        return None
    return -128 if "i" in kinds else 0


def _rebinned(hist: np.ndarray, dtype: np.dtype, offset: int) -> np.ndarray:
    """``hist`` of ``dtype`` moved to bins whose bin 0 holds ``offset`` (bool -> int8 only)."""
    return hist if _bin_offset(dtype) == offset else np.roll(hist, _bin_offset(dtype) - offset, axis=1)


def _split_rows(n_rows: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n_rows, parts + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class StatsAccumulator:
    """One-pass, mergeable per-feature statistics of a stream of batches.

    Parameters
    ----------
    layout : str, default "NCHW"
        Axis names of each batch; ``C`` or ``F`` is the feature axis, every
        other axis is reduced (see :mod:`streamnorm.layout`).
    feature_names : sequence of str, optional
        One name per feature; default ``"0"``, ``"1"``, ...
    histogram : bool, default False
        Keep each feature's distribution, for quantiles, median and IQR:
        exact counts per value for bool, 8- and 16-bit integers (8-bit data
        also gives the 256-bin :attr:`Stats.histogram`); counts on a log grid
        fixed in advance for every other dtype (see ``quantile_error``).
    quantile_error : float, default 1e-3
        For the log grid: every quantile is within this relative error of an
        order statistic next to the true quantile (``0 < quantile_error < 1``).
        Memory per feature grows with the occupied buckets, about
        ``ln(max/min) / quantile_error / 2`` for positive data.
    nan_policy : {"raise", "omit", "propagate"}, default "raise"
        What a NaN or infinity does: raise :class:`~streamnorm.errors.NonFiniteError`
        naming the batch and feature; be skipped (and counted in
        ``nan_count``); or enter the statistics (which become NaN/inf).
    threads : int, default 1
        Split large batches across this many threads running the ``nogil``
        kernels; partials are merged in a fixed order.
    ignore_value : number, optional
        Values equal to it (a raster's nodata, a padding value) are skipped
        and counted in ``masked_count``, in neither ``count`` nor
        ``nan_count``. It is compared as a value of each batch's dtype
        (``0.1`` matches ``float32(0.1)`` in float32 batches); an integer
        batch that cannot hold it (fractional, out of range) skips nothing.
        NaN is refused: use ``nan_policy="omit"``.

    Notes
    -----
    Integer batches (bool, int8-32, uint8-32) are summed exactly; merging is
    exact too, so results do not depend on batching, threads or merge order.
    Float batches (and int64/uint64, exact only below 2**53) accumulate in
    float64 about each feature's first finite value with Chan's merge.
    Integer and float batches cannot be mixed in one accumulator.

    Skipping values (``ignore_value``, ``update(batch, mask=...)``, masked
    arrays) keeps these guarantees: the statistics equal those of the kept
    values alone, bit for bit for integers. Integer batches are reduced with
    skipped values replaced by 0 (the counts, extremes and histogram bins that
    touches are corrected exactly); float batches by masked twins of the float
    kernels (see :mod:`streamnorm._masked_kernels`). A masked batch costs
    about 2-6x an unmasked one (the keep array is built at the batch's size
    and read alongside it).

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> acc = sn.StatsAccumulator(layout="NCHW", histogram=True)
    >>> for seed in range(3):
    ...     batch = np.random.default_rng(seed).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    ...     _ = acc.update(batch)
    >>> stats = acc.result()
    >>> stats.count.tolist(), stats.histogram.shape
    ([768, 768, 768], (3, 256))
    """

    STATE_FORMAT = "streamnorm.StatsAccumulator"
    # 2: masked_count (version-1 states load with zeros)
    STATE_VERSION = 2

    def __init__(
        self,
        layout: str = "NCHW",
        feature_names: Sequence[str] | None = None,
        histogram: bool = False,
        nan_policy: str = "raise",
        threads: int = 1,
        ignore_value: float | int | bool | None = None,
        quantile_error: float = DEFAULT_QUANTILE_ERROR,
    ) -> None:
        self._quantile_error = check_quantile_error(quantile_error)
        self._layout = parse_layout(layout)
        if feature_names is not None:
            if isinstance(feature_names, str):
                raise StreamnormError(
                    f"feature_names must be a sequence of names, got the string {feature_names!r}"
                )
            feature_names = tuple(str(n) for n in feature_names)
            if len(set(feature_names)) != len(feature_names):
                raise StreamnormError(f"feature_names must be unique, got {list(feature_names)}")
            if self._layout.feature_axis is None and len(feature_names) != 1:
                raise StreamnormError(
                    f"layout {self._layout.text!r} has no feature axis, so it has one feature; "
                    f"got {len(feature_names)} names"
                )
        self._feature_names = feature_names
        if nan_policy not in NAN_POLICIES:
            raise StreamnormError(
                f"nan_policy must be one of {sorted(NAN_POLICIES)}, got {nan_policy!r}"
            )
        self._nan_policy = nan_policy
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise StreamnormError(f"threads must be an integer >= 1, got {threads!r}")
        self._threads = int(threads)
        self._histogram = bool(histogram)
        self._ignore_value = _masks.check_ignore_value(ignore_value)
        self._pool: ThreadPoolExecutor | None = None
        self.reset()

    # -- configuration -------------------------------------------------
    @property
    def layout(self) -> str:
        return self._layout.text

    @property
    def histogram(self) -> bool:
        return self._histogram

    @property
    def quantile_error(self) -> float:
        """Relative bound of the log grid's quantiles (used for dtypes without exact counts)."""
        return self._quantile_error

    @property
    def nan_policy(self) -> str:
        return self._nan_policy

    @property
    def ignore_value(self) -> float | int | bool | None:
        """Value skipped wherever it occurs (counted in ``masked_count``), or None."""
        return self._ignore_value

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def n_batches(self) -> int:
        """Batches seen so far (empty ones included)."""
        return self._n_batches

    @property
    def n_features(self) -> int | None:
        """Number of features, once known."""
        return self._n_features

    @property
    def dtype(self) -> np.dtype | None:
        """Source dtype of the batches seen (promoted across batches)."""
        return self._dtype

    @property
    def dtype_name(self) -> str | None:
        """Name of the source dtype: :attr:`dtype`'s name, or ``"bfloat16"``.

        Examples
        --------
        >>> import torch, streamnorm as sn
        >>> acc = sn.StatsAccumulator("NF").update(torch.ones(2, 3, dtype=torch.bfloat16))
        >>> acc.dtype_name, acc.dtype.name
        ('bfloat16', 'float32')
        """
        if self._dtype is None:
            return None
        return BFLOAT16 if self._bfloat16 else self._dtype.name

    def reset(self) -> None:
        """Forget every batch seen; keep the configuration."""
        self._kind: str | None = None
        self._dtype: np.dtype | None = None
        # whether every batch was torch bfloat16 (held as float32, whose values it has)
        self._bfloat16: bool | None = None
        self._n_batches = 0
        # (features, dtype) of the empty batches seen before any data: what a
        # result without data reports; it fixes nothing for later batches
        self._empty: tuple[int, np.dtype] | None = None
        self._n_features = None if self._feature_names is None else len(self._feature_names)
        self._arrays: dict[str, np.ndarray] = {}
        # integer path: pending int64 sums of the offset values of _pending_dtype
        self._pending_dtype: np.dtype | None = None
        self._pending_values = 0
        # histogram=True: "hist8" (dense 256 bins in _arrays["hist"]), "exact" or "grid" (self._dist)
        self._family: str | None = None
        self._dist = None

    # -- updating --------------------------------------------------------
    def update(self, batch: Any, mask: Any = None) -> StatsAccumulator:
        """Add one batch (numpy array or CPU torch tensor, any numeric dtype).

        Parameters
        ----------
        batch : numpy array or CPU torch tensor
            A numpy masked array is honoured: its masked values are skipped.
        mask : bool numpy array or CPU torch tensor, optional
            Broadcastable to ``batch`` by numpy's rules (e.g. ``(N, 1, H, W)``
            for an NCHW batch of padded images); False skips that value, which
            is counted in ``masked_count``.

        Returns
        -------
        StatsAccumulator
            ``self``, so calls can be chained.

        Raises
        ------
        LayoutError, DTypeError, NonFiniteError, StreamnormError
            For a batch of the wrong rank, an unsupported dtype, a non-finite
            (kept) value under ``nan_policy="raise"``, a mask that is not bool
            or does not broadcast to the batch, or a feature count or kind of dtype that differs from
            earlier batches. The state is unchanged.

        Notes
        -----
        An empty batch is counted in :attr:`n_batches` and fixes neither the
        dtype nor the feature count; when no batch holds data, :meth:`result`
        reports count 0 for the empty batches' features.
        """
        if is_sparse(batch):  # stored values reduced, implicit zeros counted: never densified
            return update_sparse(self, batch, mask)
        index = self._n_batches
        arr, name = as_array(batch, index)
        keep = _masks.batch_keep(batch, arr, mask, self._ignore_value, index)
        source_dtype = arr.dtype
        kind, arr = classify(arr, index)
        try:
            view = as_reduction_view(arr, self._layout)
            kept = None if keep is None else _keep_view(arr, keep, self._layout)
        except LayoutError as exc:
            raise LayoutError(f"batch {index} of shape {tuple(arr.shape)}: {exc}") from None
        n_feat = view.shape[1]
        self._check_features(n_feat, index)
        if view.size == 0:
            if self._kind is None:
                self._empty = _empty_union(self._empty, (n_feat, source_dtype))
            self._n_batches += 1
            return self
        self._check_dtype(kind, source_dtype, index, name)
        skip = None
        raw = view
        if kept is not None:
            view, skip = self._neutralized(view, kept, kind, index)
        dtype = self._promoted(source_dtype)
        fresh = self._kind is None
        if fresh:
            before = (self._n_features, self._pending_dtype, self._pending_values)
            self._start(kind, n_feat, family(source_dtype) if self._histogram else None)
        try:
            part = (self._batch_distribution(view, source_dtype) if kept is None
                    else self._kept_distribution(raw, kept, source_dtype))
            if kind == FLOAT_KIND:
                self._update_float(view, index, skip)
            elif self._family == "hist8":
                self._update_hist(view, dtype, skip)
            elif self._family != EXACT:
                self._update_int(view, arr.dtype, skip)
            else:  # exact distributions hold the exact sums themselves
                kept_count = view.shape[0] * view.shape[2]
                self._arrays["count"] += kept_count if skip is None else kept_count - skip.masked
            if skip is not None:
                self._arrays["masked_count"] += skip.masked
        except BaseException:
            if fresh:  # a failed first batch leaves the accumulator as it was
                self._kind, self._arrays, self._family, self._dist = None, {}, None, None
                self._n_features, self._pending_dtype, self._pending_values = before
            raise
        if part is not None:
            self._add_part(part)
        self._dtype = dtype
        self._empty = None
        self._bfloat16 = name == BFLOAT16 and self._bfloat16 is not False
        self._n_batches += 1
        return self

    def update_columns(self, columns: Sequence[Any]) -> StatsAccumulator:
        """Add one batch given as one 1-D array per feature (table columns).

        The same as :meth:`update` with the columns side by side
        (``np.column_stack(columns)`` for layout ``"NF"``, ``np.stack(columns)``
        for ``"FN"``), without building that array: each column is reduced
        where it lies (e.g. a zero-copy view of an Arrow buffer). Columns of
        different dtypes are promoted to one, as ``np.column_stack`` does
        (only the columns whose dtype differs are copied).

        Parameters
        ----------
        columns : sequence of 1-D numpy arrays or CPU torch tensors
            One per feature, all of the same length. A numpy masked array's
            masked values are skipped.

        Returns
        -------
        StatsAccumulator
            ``self``, so calls can be chained.

        Raises
        ------
        LayoutError
            When the accumulator's layout is not two axes with a feature axis
            (``"NF"``, ``"FN"``), a column is not 1-D, the columns differ in
            length, or their count differs from the accumulator's features.
        DTypeError, NonFiniteError, StreamnormError
            As :meth:`update` (unsupported dtype, integer after float batches,
            non-finite value under ``nan_policy="raise"``), or when
            ``columns`` is not a list or tuple of arrays. The state is
            unchanged.

        Notes
        -----
        Statistics equal those of :meth:`update` on the stacked batch: counts,
        min, max and integer statistics exactly; float mean and m2 to a few
        units in the last place (each column is summed in its own order).
        With ``histogram=True``, ``ignore_value`` or masked columns the
        columns are stacked (a copy) and passed to :meth:`update`.

        Examples
        --------
        >>> import numpy as np, streamnorm as sn
        >>> a = np.array([1.0, 2.0, 3.0], np.float32)
        >>> b = np.array([10, 20, 60], np.int16)
        >>> acc = sn.StatsAccumulator(layout="NF", feature_names=["a", "b"])
        >>> stats = acc.update_columns([a, b]).result()
        >>> stats.mean.tolist(), stats.dtype
        ([2.0, 30.0], 'float32')
        """
        index = self._n_batches
        feature_axis = self._layout.feature_axis
        if self._layout.ndim != 2 or feature_axis is None:
            raise LayoutError(
                f"update_columns needs a two-axis layout with a feature axis, such as 'NF' or "
                f"'FN'; this accumulator's layout is {self.layout!r}: pass batches to update()"
            )
        if not isinstance(columns, (list, tuple)):
            raise StreamnormError(
                f"batch {index}: update_columns takes a list or tuple of 1-D arrays, one per "
                f"feature, got a {type(columns).__name__}; pass a 2-D array to update() instead"
            )
        if not columns:
            raise LayoutError(f"batch {index}: update_columns got no columns")
        self._check_features(len(columns), index)
        arrays: list[np.ndarray] = []
        names = set()
        for j, col in enumerate(columns):
            arr, name = as_array(col, index)
            if arr.ndim != 1:
                raise LayoutError(
                    f"batch {index}: column {j} has shape {tuple(arr.shape)}; update_columns takes "
                    f"1-D columns, one per feature"
                )
            if len(arr) != len(arrays[0] if arrays else arr):
                raise LayoutError(
                    f"batch {index}: column {j} has {len(arr)} rows but column 0 has "
                    f"{len(arrays[0])}; every column needs the same number of rows"
                )
            arrays.append(arr)
            names.add(name)
        dtype = arrays[0].dtype
        if any(a.dtype != dtype for a in arrays):
            try:
                dtype = np.result_type(*arrays)
            except TypeError as exc:
                raise DTypeError(f"batch {index}: columns of dtypes that do not mix: {exc}") from None
            arrays = [a if a.dtype == dtype else a.astype(dtype) for a in arrays]
        masked = any(isinstance(c, np.ma.MaskedArray) for c in columns)
        if masked or self._histogram or self._ignore_value is not None or len(arrays[0]) == 0:
            if masked:
                return self.update(np.ma.stack(list(columns), axis=feature_axis))
            return self.update(np.stack(arrays, axis=feature_axis))
        name = BFLOAT16 if names == {BFLOAT16} else None  # (bfloat16 columns are held as float32)
        source_dtype = dtype
        kinds = [classify(a, index) for a in arrays]
        kind = kinds[0][0]
        views = [np.ascontiguousarray(a).reshape(1, 1, -1) for _, a in kinds]
        self._check_dtype(kind, source_dtype, index, name)
        dtype = self._promoted(source_dtype)
        fresh = self._kind is None
        if fresh:
            before = (self._n_features, self._pending_dtype, self._pending_values)
            self._start(kind, len(views))
        try:
            if kind == FLOAT_KIND:
                self._update_float_columns(views, index)
            else:
                self._update_int_columns(views, views[0].dtype)
        except BaseException:
            if fresh:  # a failed first batch leaves the accumulator as it was
                self._kind, self._arrays, self._family, self._dist = None, {}, None, None
                self._n_features, self._pending_dtype, self._pending_values = before
            raise
        self._dtype = dtype
        self._empty = None
        self._bfloat16 = name == BFLOAT16 and self._bfloat16 is not False
        self._n_batches += 1
        return self

    def _neutralized(self, view: np.ndarray, kept: np.ndarray, kind: str, index: int) -> tuple[np.ndarray, _Skip]:
        """``view`` with skipped values replaced by a neutral value, and what to correct.

        Integers: 0 (adds nothing to the exact sums); floats: NaN, reduced
        with the omit policy. Kept non-finite floats are settled here, by
        ``nan_policy``, so a NaN the caller masked never raises.
        """
        n_feat = view.shape[1]
        skip = _Skip(np.zeros(n_feat, np.int64))
        out = np.empty(view.shape, view.dtype)
        if kind == INT_KIND:
            skip.lo = np.full(n_feat, np.iinfo(np.int64).max)
            skip.hi = np.full(n_feat, np.iinfo(np.int64).min)
            MK.neutralize_int(view, kept, out, skip.masked, skip.lo, skip.hi)
            return out, skip
        entered = np.zeros(n_feat, np.int64)
        MK.scan_float(view, kept, skip.masked, entered)
        if not entered.any():  # the usual case: the masked float kernels read the batch as it is
            skip.keep = kept
            return view, skip
        if self._nan_policy == "raise":
            raise NonFiniteError(
                f"batch {index}: feature {self._name(int(np.argmax(entered > 0)))} has a non-finite value "
                f"(NaN or inf) that the mask keeps; clean the data, or pass nan_policy='omit' to skip such "
                f"values (they are counted in nan_count) or nan_policy='propagate' to let them through"
            )
        skip.masked[:] = 0
        flags = tuple(np.zeros(n_feat, np.uint8) for _ in range(3))
        MK.neutralize_float(view, kept, out, skip.masked, np.zeros(n_feat, np.int64), *flags)
        if self._nan_policy == "propagate":
            skip.entered = entered
            skip.flags = tuple(flag.astype(bool) for flag in flags)
        return out, skip

    def _promoted(self, dtype: np.dtype) -> np.dtype:
        if self._dtype is None or dtype == self._dtype:
            return dtype
        return np.promote_types(self._dtype, dtype)

    def _check_features(self, n_feat: int, index: int) -> None:
        if self._n_features is not None and n_feat != self._n_features:
            what = (
                f"{len(self._feature_names)} feature names"
                if self._feature_names is not None and self._kind is None
                else f"{self._n_features} features in earlier batches"
            )
            raise LayoutError(
                f"batch {index} has {n_feat} features on the {self._feature_letter()} axis of "
                f"layout {self.layout!r}, but the accumulator expects {what}"
            )

    def _check_dtype(self, kind: str, dtype: np.dtype, index: int, name: str | None) -> None:
        shown = name or dtype  # str(dtype) only when an error is raised: .name is slow
        if self._kind is not None and kind != self._kind:
            raise DTypeError(
                f"batch {index} has dtype {shown} but earlier batches were {self.dtype_name}; integer "
                f"and float batches cannot share an accumulator: cast them to one dtype"
            )
        if self._histogram and self._family is not None:
            self._check_family(family(dtype), shown, index)
        if (self._histogram and self._family == "hist8" and family(dtype) == "hist8"
                and self._dtype is not None and dtype != self._dtype
                and _histogram_offset(self._dtype, dtype) is None):
            raise DTypeError(
                f"batch {index} has dtype {shown} but earlier batches were {self._dtype.name}: with "
                f"histogram=True their 256-bin histograms cannot be combined (int8 holds -128..127, "
                f"uint8 0..255); cast every batch to one 8-bit dtype, or pass histogram=False "
                f"(exact moments for any mix of integer dtypes)"
            )

    def _check_family(self, batch_family: str, shown: Any, index: int) -> None:
        """Refuse a batch whose distribution cannot join the one kept so far."""
        exact = {"hist8", EXACT}
        if batch_family == self._family or {batch_family, self._family} <= exact:
            return
        what = {"hist8": "exact counts of 8-bit values", EXACT: "exact counts of 16-bit values",
                GRID: "counts on a log grid"}
        raise DTypeError(
            f"batch {index} has dtype {shown}, whose histogram=True distribution is {what[batch_family]}, "
            f"but earlier batches ({self.dtype_name}) keep {what[self._family]}; cast every batch to "
            f"one kind of dtype (bool/8/16-bit integers are exact, others use the grid)"
        )

    def _batch_distribution(self, view: np.ndarray, dtype: np.dtype) -> Distribution | None:
        """This batch's sparse distribution (None unless the state keeps exact or grid counts)."""
        if self._family == "hist8" and family(dtype) == EXACT:
            self._to_sparse()  # 8-bit bins so far, 16-bit values now: exact counts hold both
        if self._family not in (EXACT, GRID):
            return None
        keep_inf = self._nan_policy == "propagate"
        parts = self._run(self._parts(view),
                          lambda x: count_batch(x, self._family, self._quantile_error, keep_inf))
        total = parts[0]
        for p in parts[1:]:
            total = total.merge(p)
        return total

    def _kept_distribution(self, raw: np.ndarray, kept: np.ndarray, dtype: np.dtype) -> Distribution | None:
        """The distribution of the kept values only (masked ones never enter the counts)."""
        if self._family not in (EXACT, GRID) and not (self._family == "hist8" and family(dtype) == EXACT):
            return None
        parts = [self._batch_distribution(raw[:, f, :][kept[:, f, :] != 0].reshape(-1, 1, 1), dtype)
                 for f in range(raw.shape[1])]
        return Distribution.concat(parts)

    @property
    def _dist(self) -> Distribution | None:
        """The sparse distribution so far (pending batch parts merged in first)."""
        pending = self.__dict__.get("_dist_pending")
        if pending:
            while len(pending) > 1:  # a balanced tree: merge cost stays near linear
                pending = [pending[i].merge(pending[i + 1]) if i + 1 < len(pending) else pending[i]
                           for i in range(0, len(pending), 2)]
            self._dist_state = self._dist_state.merge(pending[0])
            self._dist_pending = []
        return self.__dict__.get("_dist_state")

    @_dist.setter
    def _dist(self, value: Distribution | None) -> None:
        self._dist_state = value
        self._dist_pending: list[Distribution] = []

    def _add_part(self, part: Distribution) -> None:
        """Keep a batch's counts aside; merge them into the state once they outweigh it.

        Merging every small batch into a large state would cost the state's
        size per batch; waiting until the parts hold as many keys as the state
        keeps the cost per key bounded. Counts add exactly, so when they merge
        changes nothing in the result.
        """
        self._dist_pending.append(part)
        size = sum(p.keys.size for p in self._dist_pending)
        if size >= max(self._dist_state.keys.size, 1 << 16) or len(self._dist_pending) >= 1024:
            _ = self._dist

    def _to_sparse(self) -> None:
        """Move dense 8-bit bins into exact sparse counts (values as keys)."""
        a = self._arrays
        self._dist = Distribution.from_dense(a.pop("hist"), _bin_offset(self._dtype))
        self._family = EXACT

    def _feature_letter(self) -> str:
        axis = self._layout.feature_axis
        return "feature" if axis is None else repr(self._layout.text[axis])

    def _start(self, kind: str, n_feat: int, dist_family: str | None = None) -> None:
        self._kind = kind
        self._family = dist_family
        self._dist = None
        if dist_family in (EXACT, GRID):
            self._dist = Distribution.empty(n_feat, dist_family, self._quantile_error)
        self._n_features = n_feat
        z = lambda dt=np.float64: np.zeros(n_feat, dt)  # noqa: E731
        a: dict[str, np.ndarray] = {"count": z(np.int64), "nan_count": z(np.int64),
                                    "masked_count": z(np.int64)}
        if kind == FLOAT_KIND:
            a.update(shift=z(), has_shift=z(np.uint8), mean=z(), m2=z(),
                     min=np.full(n_feat, np.inf), max=np.full(n_feat, -np.inf))
        elif dist_family == "hist8":
            a["hist"] = np.zeros((n_feat, HISTOGRAM_BINS), np.int64)
        elif dist_family != EXACT:
            a.update(
                int_sum=np.zeros(n_feat, object), int_sumsq=np.zeros(n_feat, object),
                min=np.full(n_feat, np.iinfo(np.int64).max), max=np.full(n_feat, np.iinfo(np.int64).min),
                p_s=z(np.int64), p_q0=z(np.int64), p_q1=z(np.int64), p_q2=z(np.int64),
            )
            a["int_sum"][:] = 0
            a["int_sumsq"][:] = 0
        self._arrays = a

    def _run(self, tasks: list, worker) -> list:
        """Run ``worker`` over tasks, in threads when worthwhile; results in order."""
        if len(tasks) == 1:
            return [worker(tasks[0])]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="streamnorm")
        return list(self._pool.map(worker, tasks))

    def _parts(self, view: np.ndarray, keep: np.ndarray | None = None) -> list[Any]:
        """``view`` split by rows for the threads; with ``keep``, ``(view, keep)`` pairs split alike."""
        parts = 1
        if self._threads > 1 and view.nbytes >= MIN_PARALLEL_BYTES:
            parts = min(self._threads, view.shape[0])
        bounds = [(0, view.shape[0])] if parts == 1 else _split_rows(view.shape[0], parts)
        if keep is None:
            return [view] if parts == 1 else [view[a:b] for a, b in bounds]
        return [(view[a:b], keep[a:b]) for a, b in bounds]

    # integers ---------------------------------------------------------
    def _update_int(self, view: np.ndarray, dtype: np.dtype, skip: _Skip | None = None) -> None:
        size = dtype.itemsize
        unsigned = view.view(np.dtype(f"u{size}"))
        xor = unsigned.dtype.type((1 << (8 * size - 1)) if dtype.kind == "i" else 0)
        n_outer, n_feat, n_inner = unsigned.shape
        rows_per_piece = max(1, PENDING_LIMIT[size] // max(1, n_inner))

        def pieces() -> Iterator[tuple[int, list]]:
            for r0 in range(0, n_outer, rows_per_piece):
                piece = unsigned[r0 : r0 + rows_per_piece]
                yield (piece.shape[0] * n_inner,
                       lambda: self._run(self._parts(piece), lambda x: int_moments(x, xor)))

        self._merge_int(pieces(), dtype, xor, skip)

    def _update_int_columns(self, views: list[np.ndarray], dtype: np.dtype) -> None:
        """Like :meth:`_update_int` for one ``(1, 1, rows)`` view per feature."""
        size = dtype.itemsize
        unsigned = [v.view(np.dtype(f"u{size}")) for v in views]
        xor = unsigned[0].dtype.type((1 << (8 * size - 1)) if dtype.kind == "i" else 0)
        n_rows = views[0].shape[2]
        step = PENDING_LIMIT[size]

        def pieces() -> Iterator[tuple[int, list]]:
            for r0 in range(0, n_rows, step):
                cols = [u[:, :, r0 : r0 + step] for u in unsigned]
                yield (cols[0].shape[2], lambda: [tuple(
                    np.concatenate(arrays) for arrays in zip(*self._run_columns(
                        cols, lambda j: int_moments(cols[j], xor))))])

        self._merge_int(pieces(), dtype, xor, None)

    def _merge_int(self, pieces: Iterable[tuple[int, Any]], dtype: np.dtype, xor: np.integer,
                   skip: _Skip | None) -> None:
        """Add an integer batch, given as ``(values per feature, partials thunk)`` pieces."""
        a = self._arrays
        limit = PENDING_LIMIT[dtype.itemsize]
        for values, partials in pieces:
            if self._pending_dtype != dtype or self._pending_values + values > limit:
                self._flush()
                self._pending_dtype = dtype
            results = partials()
            for s, q0, q1, q2, lo, hi in results:
                a["p_s"] += s
                a["p_q0"] += q0
                a["p_q1"] += q1
                a["p_q2"] += q2
                if skip is None:  # (masked: the neutral 0 is no extreme; skip has the kept ones)
                    off = int(xor)
                    np.minimum(a["min"], lo - off, out=a["min"])
                    np.maximum(a["max"], hi - off, out=a["max"])
            self._pending_values += values
            a["count"] += values
        if skip is not None:
            a["count"] -= skip.masked
            np.minimum(a["min"], skip.lo, out=a["min"])
            np.maximum(a["max"], skip.hi, out=a["max"])

    def _update_hist(self, view: np.ndarray, dtype: np.dtype, skip: _Skip | None = None) -> None:
        """Count 8-bit values into the bins of ``dtype``, the dtype of all batches so far."""
        a = self._arrays
        offset = _bin_offset(dtype)
        if self._dtype is not None and dtype != self._dtype and _bin_offset(self._dtype) != offset:
            a["hist"] = np.roll(a["hist"], -offset, axis=1)  # bool counts move to int8's bins of 0, 1
        unsigned = view.view(np.uint8)
        xor = np.uint8(-offset)  # maps an int8 (or bool) byte to its int8 bin
        hist = a["hist"]
        for h in self._run(self._parts(unsigned), lambda x: hist_counts(x, xor)):
            hist += h
        a["count"] += unsigned.shape[0] * unsigned.shape[2]
        if skip is not None:  # the skipped values were counted as 0s
            hist[:, -offset] -= skip.masked
            a["count"] -= skip.masked

    def _flush(self) -> None:
        """Move pending int64 sums of offset values into the exact totals."""
        a = self._arrays
        dtype = self._pending_dtype
        if dtype is None or self._pending_values == 0:
            self._pending_values = 0
            return
        n = self._pending_values
        off = (1 << (8 * dtype.itemsize - 1)) if dtype.kind == "i" else 0
        su = a["p_s"].astype(object)
        if dtype.itemsize == 4:
            squ = (a["p_q0"].astype(object) << 32) + (a["p_q1"].astype(object) << 17) + a["p_q2"].astype(object)
        else:
            squ = a["p_q0"].astype(object)
        # sum(v) = sum(u) - off*n ; sum(v^2) = sum(u^2) - 2*off*sum(u) + off^2*n
        a["int_sum"] += su - off * n
        a["int_sumsq"] += squ - 2 * off * su + off * off * n
        for key in ("p_s", "p_q0", "p_q1", "p_q2"):
            a[key][:] = 0
        self._pending_values = 0

    # floats -----------------------------------------------------------
    def _update_float(self, view: np.ndarray, index: int, skip: _Skip | None = None) -> None:
        keep = None if skip is None else skip.keep
        # NaN path of a mask: the skipped values are NaNs, omitted; kept non-finite ones are settled after
        policy = NAN_POLICIES["omit" if skip is not None else self._nan_policy]
        parts = self._parts(view) if keep is None else self._parts(view, keep)

        def first(shift: np.ndarray, has_shift: np.ndarray) -> None:
            if keep is None:
                K.first_finite(view, shift, has_shift)
            else:
                MK.first_kept_finite(view, keep, shift, has_shift)

        def reduce(shift: np.ndarray) -> list:
            return self._run(parts, lambda x: float_moments(x, shift, policy))

        self._merge_float(first, reduce, index, skip)

    def _update_float_columns(self, views: list[np.ndarray], index: int) -> None:
        """Like :meth:`_update_float` for one ``(1, 1, rows)`` view per feature."""
        policy = NAN_POLICIES[self._nan_policy]

        def first(shift: np.ndarray, has_shift: np.ndarray) -> None:
            for j, x in enumerate(views):
                if not has_shift[j]:
                    K.first_finite(x, shift[j:j + 1], has_shift[j:j + 1])

        def reduce(shift: np.ndarray) -> list:
            out = fresh_moments(len(views))

            def column(j: int) -> int:
                x = views[j]
                if x.dtype.itemsize < 8 and x.shape[2] > 1:
                    # float_moments' plain case (no float32 value is HUGE away from its shift),
                    # written straight into this column's slots: no per-column arrays
                    return K.float_planes(x, shift[j:j + 1], out[0][j:j + 1], out[1][j:j + 1],
                                          out[2][j:j + 1], out[3][j:j + 1], out[4][j:j + 1],
                                          out[5][j:j + 1], policy)
                *part, bad = float_moments(x, shift[j:j + 1], policy)
                for slot, value in zip(out, part):
                    slot[j] = value[0]
                return bad

            bads = self._run_columns(views, column)
            return [(*out, next((j for j, bad in enumerate(bads) if bad >= 0), -1))]

        self._merge_float(first, reduce, index, None)

    def _run_columns(self, views: list[np.ndarray], worker) -> list:
        """``worker(j)`` for every column ``j``, in threads when worthwhile; results in order."""
        if self._threads == 1 or sum(v.nbytes for v in views) < MIN_PARALLEL_BYTES:
            return [worker(j) for j in range(len(views))]
        return self._run(list(range(len(views))), worker)

    def _merge_float(self, first, reduce, index: int, skip: _Skip | None) -> None:
        """Reduce a float batch about each feature's shift and merge it into the state.

        ``first(shift, has_shift)`` sets the shift of features that have none
        yet; ``reduce(shift)`` returns the batch's partials, one
        ``(n, nonfinite, mean, m2, min, max, bad)`` per part.
        """
        a = self._arrays
        shift = a["shift"].copy()
        has_shift = a["has_shift"].copy()
        if not has_shift.all():
            first(shift, has_shift)
        results = reduce(shift)
        for *_, bad in results:
            if bad >= 0:
                raise NonFiniteError(
                    f"batch {index}: feature {self._name(bad)} has a non-finite value (NaN or inf); "
                    f"clean the data, or pass nan_policy='omit' to skip such values (they are counted "
                    f"in nan_count) or nan_policy='propagate' to let them through"
                )
        lo, hi = a["min"], a["max"]
        for _, _, _, _, plo, phi, _ in results:
            lo = np.where(np.isnan(plo) | np.isnan(lo), np.nan, np.fmin(lo, plo))
            hi = np.where(np.isnan(phi) | np.isnan(hi), np.nan, np.fmax(hi, phi))
        mean = a["mean"]
        wide = too_wide(lo, hi, shift)
        if wide.any():  # about shift 0 from now on: x - shift would overflow
            mean = np.where(wide, mean + shift, mean)
            shift = np.where(wide, 0.0, shift)
            results = reduce(shift)
        count, m2, nonfinite = a["count"], a["m2"], a["nan_count"].copy()
        for n, nf, pmean, pm2, *_ in results:
            count, mean, m2 = chan_merge(count, mean, m2, n, pmean, pm2)
            nonfinite = nonfinite + nf
        if skip is not None:
            count, lo, hi, nonfinite = _propagated(skip, count, lo, hi, nonfinite)
        mean, m2 = _nonfinite_moments(mean, m2, lo, hi)
        a.update(count=count.astype(np.int64), mean=mean, m2=m2, min=lo, max=hi,
                 nan_count=nonfinite, shift=shift, has_shift=has_shift)

    def _name(self, feature: int) -> str:
        if self._feature_names is not None:
            return f"{self._feature_names[feature]!r} (index {feature})"
        return f"{feature}"

    # -- merging and results -------------------------------------------
    def merge(self, other: StatsAccumulator) -> StatsAccumulator:
        """Add the state of ``other`` (from other shards, workers or ranks) in place.

        Returns ``self``. ``other`` is left as it was (its pending integer
        sums may be flushed, which changes nothing it reports).
        """
        if not isinstance(other, StatsAccumulator):
            raise IncompatibleStatsError(f"cannot merge a {type(other).__name__} into a StatsAccumulator")
        if other.layout != self.layout or other.histogram != self.histogram:
            raise IncompatibleStatsError(
                f"cannot merge accumulators with different settings: layout {self.layout!r} vs "
                f"{other.layout!r}, histogram {self.histogram} vs {other.histogram}"
            )
        if (self._feature_names is not None and other._feature_names is not None
                and self._feature_names != other._feature_names):
            raise IncompatibleStatsError("cannot merge accumulators with different feature names")
        if (self._n_features is not None and other._n_features is not None
                and other._n_features != self._n_features):
            raise IncompatibleStatsError(
                f"cannot merge {other._n_features} features into an accumulator of "
                f"{self._n_features} features (from its feature names or batches)"
            )
        if other._kind is None:
            if self._kind is None and other._empty is not None:
                self._empty = _empty_union(self._empty, other._empty)
            self._n_batches += other._n_batches
            return self
        if self._kind is None:
            batches = self._n_batches
            names = self._feature_names or other._feature_names
            self.load_state_dict(other.state_dict())
            self._feature_names = names
            self._n_batches += batches
            return self
        if other._kind != self._kind:
            raise IncompatibleStatsError(
                f"cannot merge statistics of {other.dtype_name} data into statistics of "
                f"{self.dtype_name} data: integer and float statistics do not mix"
            )
        offset = None
        if self._histogram:
            self._check_family(other._family, other.dtype_name, 0)
            if EXACT in (self._family, other._family):
                self._merge_sparse(other)
                return self
            offset = _histogram_offset(self._dtype, other._dtype)
            if offset is None:
                raise IncompatibleStatsError(
                    f"cannot merge histograms of {other._dtype.name} data into histograms of "
                    f"{self._dtype.name} data (int8 holds -128..127, uint8 0..255, no 256 bins hold "
                    f"both); accumulate one 8-bit dtype, or use histogram=False"
                )
        if self._family == GRID:
            self._dist = self._dist.merge(other._dist)
        a, b = self._arrays, other._arrays
        if self._kind == INT_KIND:
            self._flush()
            other._flush()
            if self._family == "hist8":
                a["hist"] = (_rebinned(a["hist"], self._dtype, offset)
                             + _rebinned(b["hist"], other._dtype, offset))
            else:
                a["int_sum"] += b["int_sum"]
                a["int_sumsq"] += b["int_sumsq"]
                np.minimum(a["min"], b["min"], out=a["min"])
                np.maximum(a["max"], b["max"], out=a["max"])
            a["count"] += b["count"]
        else:
            take = (a["has_shift"] == 0) & (b["has_shift"] == 1)
            shift = np.where(take, b["shift"], a["shift"])
            nan_min = np.isnan(a["min"]) | np.isnan(b["min"])
            lo = np.where(nan_min, np.nan, np.fmin(a["min"], b["min"]))
            hi = np.where(nan_min, np.nan, np.fmax(a["max"], b["max"]))
            mean_a = a["mean"]
            with np.errstate(over="ignore", invalid="ignore"):
                mean_b = b["mean"] + (b["shift"] - shift)
                wide = too_wide(lo, hi, shift) | too_wide(lo, hi, b["shift"])
                if wide.any():  # the shifts may be too far apart: both sides about 0
                    mean_a = np.where(wide, mean_a + a["shift"], mean_a)
                    mean_b = np.where(wide, b["mean"] + b["shift"], mean_b)
                    shift = np.where(wide, 0.0, shift)
            count, mean, m2 = chan_merge(a["count"], mean_a, a["m2"], b["count"], mean_b, b["m2"])
            mean, m2 = _nonfinite_moments(mean, m2, lo, hi)
            a.update(count=count.astype(np.int64), mean=mean, m2=m2, shift=shift,
                     has_shift=a["has_shift"] | b["has_shift"], min=lo, max=hi)
        a["nan_count"] += b["nan_count"]
        a["masked_count"] += b["masked_count"]
        self._dtype = np.promote_types(self._dtype, other._dtype)
        self._bfloat16 = bool(self._bfloat16 and other._bfloat16)
        self._n_batches += other._n_batches
        return self

    def _merge_sparse(self, other: StatsAccumulator) -> None:
        """Merge exact counts (either side may still hold dense 8-bit bins)."""
        mine = self._dist if self._family == EXACT else Distribution.from_dense(
            self._arrays["hist"], _bin_offset(self._dtype))
        theirs = other._dist if other._family == EXACT else Distribution.from_dense(
            other._arrays["hist"], _bin_offset(other._dtype))
        self._arrays.pop("hist", None)
        self._family, self._dist = EXACT, mine.merge(theirs)
        self._arrays["count"] += other._arrays["count"]
        self._arrays["nan_count"] += other._arrays["nan_count"]
        self._dtype = np.promote_types(self._dtype, other._dtype)
        self._bfloat16 = False
        self._n_batches += other._n_batches

    def result(self) -> Stats:
        """The statistics of every batch seen, as an immutable :class:`Stats`.

        Raises
        ------
        StreamnormError
            When no batch has been seen.
        """
        if self._kind is None and self._empty is not None:
            return self._empty_result()
        if self._kind is None:
            raise StreamnormError(
                "the accumulator has seen no data; call update() with at least one batch first"
            )
        a = self._arrays
        names = self._feature_names or tuple(str(i) for i in range(self._n_features))
        common = dict(layout=self.layout, feature_names=names, dtype=self.dtype_name,
                      count=a["count"], nan_count=a["nan_count"], masked_count=a["masked_count"])
        if self._kind == FLOAT_KIND:
            empty = a["count"] == 0
            shifted_mean = np.where(empty, np.nan, a["mean"])
            with np.errstate(invalid="ignore"):
                mean = a["shift"] + shifted_mean
            return Stats(**common, mean=mean, m2=np.where(empty, 0.0, a["m2"]),
                         min=np.where(empty, np.nan, a["min"]), max=np.where(empty, np.nan, a["max"]),
                         shift=a["shift"], shifted_mean=shifted_mean, distribution=self._dist)
        if self._family == EXACT:
            int_sum, int_sumsq, lo, hi = exact_sums(self._dist)
        elif self._family == "hist8":
            hist = a["hist"]
            values = np.arange(HISTOGRAM_BINS, dtype=object) + (-128 if self._dtype == np.int8 else 0)
            weights = hist.astype(object)
            int_sum = (weights * values).sum(axis=1)
            int_sumsq = (weights * values * values).sum(axis=1)
            seen = hist > 0
            lo = np.array([values[np.argmax(row)] if row.any() else np.nan for row in seen], np.float64)
            hi = np.array([values[HISTOGRAM_BINS - 1 - np.argmax(row[::-1])] if row.any() else np.nan
                           for row in seen], np.float64)
        else:
            self._flush()
            int_sum, int_sumsq = a["int_sum"], a["int_sumsq"]
            empty = a["count"] == 0
            lo = np.where(empty, np.nan, a["min"].astype(np.float64))
            hi = np.where(empty, np.nan, a["max"].astype(np.float64))
        int_sum = [int(v) for v in int_sum]
        int_sumsq = [int(v) for v in int_sumsq]
        mean, m2 = exact_moments_array(a["count"], int_sum, int_sumsq)
        return Stats(
            **common, mean=mean, m2=m2,
            min=lo, max=hi, histogram=a.get("hist"),
            int_sum=tuple(int_sum), int_sumsq=tuple(int_sumsq), distribution=self._dist,
        )

    def _empty_result(self) -> Stats:
        """count-0 statistics of the features of the empty batches seen."""
        n_feat, dtype = self._empty
        kind, _ = classify(np.empty(0, dtype), self._n_batches)
        probe = StatsAccumulator(self.layout, self._feature_names, self._histogram, self._nan_policy,
                                 quantile_error=self._quantile_error)
        probe._start(kind, n_feat, family(dtype) if self._histogram else None)
        probe._dtype = dtype
        return probe.result()

    # -- state -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole state as plain values: str, int, float, lists, numpy arrays.

        Exact integer sums are lists of Python ints. Nothing needs pickle, so a
        checkpoint can be stored as JSON, npz or Parquet.
        """
        if self._kind == INT_KIND:
            self._flush()
        state: dict[str, Any] = {
            "format": self.STATE_FORMAT,
            "version": self.STATE_VERSION,
            "layout": self.layout,
            "histogram": self._histogram,
            "feature_names": None if self._feature_names is None else list(self._feature_names),
            "kind": self._kind,
            "dtype": self.dtype_name,
            "n_batches": self._n_batches,
            "n_features": self._n_features,
            "empty": None if self._empty is None else [self._empty[0], self._empty[1].name],
            "quantile_error": self._quantile_error,
            "family": self._family,
        }
        if self._dist is not None:
            state.update(dist_offsets=self._dist.offsets.copy(), dist_keys=self._dist.keys.copy(),
                         dist_counts=self._dist.counts.copy())
        for key, value in self._arrays.items():
            if key.startswith("p_"):
                continue
            state[key] = [int(v) for v in value] if value.dtype == object else value.copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; continuing equals never stopping.

        Raises
        ------
        StreamnormError
            For anything but a consistent state of an accumulator with this
            layout and histogram setting (then nothing changes).
        """
        if not isinstance(state, Mapping):
            raise StreamnormError(
                f"a StatsAccumulator state is a dict from state_dict(), got a {type(state).__name__}"
            )
        try:
            if state.get("format") != self.STATE_FORMAT:
                raise StreamnormError("not a StatsAccumulator state")
            if int(state["version"]) > self.STATE_VERSION:
                raise StreamnormError(
                    f"state version {state['version']} is newer than this streamnorm understands "
                    f"({self.STATE_VERSION}); upgrade streamnorm"
                )
            if state["layout"] != self.layout or bool(state["histogram"]) != self._histogram:
                raise IncompatibleStatsError(
                    f"state of layout {state['layout']!r} (histogram={state['histogram']}) cannot be "
                    f"loaded into an accumulator of layout {self.layout!r} (histogram={self._histogram})"
                )
            names = state.get("feature_names")
            fresh = StatsAccumulator(self.layout, names, self._histogram, self._nan_policy, self._threads,
                                     self._ignore_value,
                                     quantile_error=state.get("quantile_error", self._quantile_error))
            kind = state["kind"]
            if kind is not None:
                if kind not in (INT_KIND, FLOAT_KIND):
                    raise StreamnormError(f"unknown kind {kind!r}")
                fresh._start(kind, int(state["n_features"]), fresh._state_family(state))
                for key, template in fresh._arrays.items():
                    if key.startswith("p_") or (key == "masked_count" and key not in state):
                        continue  # (version-1 states have no masked_count: zeros)
                    if template.dtype == object:
                        values = [int(v) for v in state[key]]
                        if len(values) != template.shape[0]:
                            raise StreamnormError(f"{key} has {len(values)} values, expected {template.shape[0]}")
                        template[:] = values
                    else:
                        value = np.asarray(state[key], dtype=template.dtype)
                        if value.shape != template.shape:
                            raise StreamnormError(f"{key} has shape {value.shape}, expected {template.shape}")
                        template[...] = value
                fresh._restore_dtype(str(state["dtype"]), kind)
                if fresh._family in (EXACT, GRID):
                    fresh._dist = Distribution(fresh._family, fresh._quantile_error, state["dist_offsets"],
                                               state["dist_keys"], state["dist_counts"])
                    if fresh._dist.n_features != fresh._n_features:
                        raise StreamnormError("the distribution's feature count differs from n_features")
            fresh._n_batches = int(state["n_batches"])
            empty = state.get("empty")
            if kind is None and empty is not None:
                fresh._empty = (int(empty[0]), np.dtype(str(empty[1])))
            fresh._n_features = None if state["n_features"] is None else int(state["n_features"])
            if names is not None and fresh._n_features is not None and len(names) != fresh._n_features:
                raise StreamnormError(
                    f"malformed StatsAccumulator state: {len(names)} feature names for "
                    f"{fresh._n_features} features"
                )
            problem = _state_problem(fresh)
            if problem is not None:
                raise StreamnormError(f"inconsistent StatsAccumulator state: {problem}; it was not "
                                      f"written by state_dict(), or was changed since")
        except StreamnormError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StreamnormError(f"malformed StatsAccumulator state: {exc!r}") from None
        pool = self._pool
        self.__dict__.update(fresh.__dict__)
        self._pool = pool

    def _restore_dtype(self, name: str, kind: str) -> None:
        """Set the dtype of a loaded state, refusing one its arrays cannot hold."""
        self._bfloat16 = name == BFLOAT16
        dtype = np.dtype(np.float32 if self._bfloat16 else name)
        expected = INT_KIND if dtype.kind in "biu" and dtype.itemsize < 8 else FLOAT_KIND
        if dtype.kind not in "biuf" or expected != kind:
            raise StreamnormError(f"malformed StatsAccumulator state: dtype {name!r} does not fit kind {kind!r}")
        if self._histogram and self._family != EXACT and family(dtype) != self._family:
            raise StreamnormError(
                f"malformed StatsAccumulator state: its {self._family} distribution does not fit dtype {name!r}"
            )
        self._dtype = dtype

    def _state_family(self, state: Mapping[str, Any]) -> str | None:
        """The distribution family of a loaded state (states before distributions: 8-bit bins)."""
        if not self._histogram:
            return None
        found = state.get("family", "hist8")
        if found not in ("hist8", EXACT, GRID):
            raise StreamnormError(f"unknown distribution family {found!r}")
        return found

    def copy(self) -> StatsAccumulator:
        """An independent copy (same configuration and state)."""
        other = copy.copy(self)
        other._pool = None
        other._arrays = {k: v.copy() for k, v in self._arrays.items()}
        other._dist_pending = list(self._dist_pending)  # (Distributions are immutable: sharing is safe)
        return other

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None  # thread pools do not travel (Dask, multiprocessing)
        return state

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def __repr__(self) -> str:
        return (f"StatsAccumulator(layout={self.layout!r}, histogram={self._histogram}, "
                f"nan_policy={self._nan_policy!r}, threads={self._threads}, "
                f"n_batches={self._n_batches}, n_features={self._n_features}, dtype={self._dtype})")


def check_mask_key(key: Key, mask_key: Key) -> None:
    """Refuse a ``mask_key`` that cannot pick a mask out of the same batches as ``key``."""
    if mask_key is None:
        return
    if isinstance(mask_key, bool) or not isinstance(mask_key, (int, str)):
        raise StreamnormError(f"mask_key must be an int (tuple/list batches) or a str (dict batches), got {mask_key!r}")
    if key is None:
        raise StreamnormError(
            f"mask_key={mask_key!r} picks the mask out of tuple or dict batches, so key= must pick the data "
            f"out of them too (e.g. key=0, mask_key=2 for (images, labels, masks) batches)"
        )
    if key == mask_key:
        raise StreamnormError(f"key and mask_key are both {key!r}; the mask must be another element of the batch")


def update_with_mask(acc: Any, item: Any, key: Key, mask_key: Key) -> None:
    """``acc.update`` with the element at ``key`` of ``item`` and, given ``mask_key``, its mask.

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> acc = sn.StatsAccumulator("NF")
    >>> update_with_mask(acc, {"x": np.array([[1.0], [9.0]]), "m": np.array([[True], [False]])}, "x", "m")
    >>> acc.result().mean.tolist(), acc.result().masked_count.tolist()
    ([1.0], [1])
    """
    if mask_key is None:
        acc.update(pick(item, key))
    else:
        acc.update(pick(item, key), mask=pick(item, mask_key))


def compute_stats(
    source: Iterable[Any] | np.ndarray,
    layout: str = "NCHW",
    key: Key = None,
    mask_key: Key = None,
    **acc_kwargs: Any,
) -> Stats:
    """Statistics of every batch of ``source``, in one pass.

    Parameters
    ----------
    source : iterable of batches, or one array/tensor
        Batches are numpy arrays or CPU torch tensors, or tuples/lists/dicts of
        them (then ``key`` picks the element). A DataLoader works as it is; its
        workers only load, the reduction runs in this process. A single
        numpy array or torch tensor is taken as one batch.
    layout : str, default "NCHW"
        See :class:`StatsAccumulator`.
    key : int or str, optional
        The element of tuple/list (int) or dict (str) batches to reduce.
    mask_key : int or str, optional
        The element of the same batches holding each batch's mask (bool,
        broadcastable to the data; False skips a value, see
        :meth:`StatsAccumulator.update`).
    **acc_kwargs
        ``feature_names``, ``histogram``, ``quantile_error``, ``nan_policy``, ``threads``,
        ``ignore_value``.

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> images = np.full((8, 3, 4, 4), 7, np.uint8)
    >>> labels = np.zeros(8, np.int64)
    >>> sn.compute_stats([(images, labels)], layout="NCHW", key=0).mean.tolist()
    [7.0, 7.0, 7.0]

    Padded images with their masks, and a nodata value:

    >>> masks = np.zeros((8, 1, 4, 4), bool); masks[:, :, :2] = True
    >>> s = sn.compute_stats([(images, masks)], layout="NCHW", key=0, mask_key=1, ignore_value=0)
    >>> s.count.tolist(), s.masked_count.tolist()
    ([64, 64, 64], [64, 64, 64])
    """
    check_mask_key(key, mask_key)
    acc = StatsAccumulator(layout=layout, **acc_kwargs)
    if isinstance(source, np.ndarray) or (
        type(source).__module__.startswith("torch") and hasattr(source, "detach")
    ):
        return acc.update(source).result()
    if isinstance(source, (str, bytes, Mapping)) or not isinstance(source, Iterable):
        raise StreamnormError(
            f"source is a {type(source).__name__}; pass an iterable of batches (a list, a "
            f"DataLoader, a generator) or one numpy array or torch tensor"
        )
    for batch in source:
        update_with_mask(acc, batch, key, mask_key)
    return acc.result()
