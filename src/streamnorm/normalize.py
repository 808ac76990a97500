"""Normalization as one affine map per feature: ``y = x * scale + shift``.

z-score, min-max to [0, 1], [-1, 1], robust (median/IQR) and known ranges
(0..255) all reduce to a per-feature ``scale`` and ``shift``. Each mode is
built in float64 from :class:`~streamnorm.Stats` (or a range) by
:mod:`streamnorm._modes`, and evaluated by :mod:`streamnorm._affine` as
``(x - center) * scale + offset`` (the same map, without the cancellation of
``x * scale + shift`` on data far from zero), with parameters rounded once per
compute dtype, moved to a device once, and applied on the device where the
batch lives into an output allocated like the input (a channels_last batch
stays channels_last). The inverse is the same form again.

Per-sample standardization (each sample by its own mean and std, no stored
statistics) is a separate, explicit mode: :meth:`Normalizer.per_sample`.

Batches are broadcast along the feature axis of the normalizer's layout
(``C``/``F``): NCHW statistics on NCHW batches, NHWC on NHWC, NF on NF. A batch
may also be one sample of that layout (rank one less, leading ``N`` dropped:
a CHW image for NCHW statistics), which is what a per-sample transform in a
``Dataset`` sees. A normalizer whose layout has no feature axis (``"N"``, what
scalar ranges give) applies its single scale and shift to any batch.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import _config, _modes
from ._affine import AffineMap, evaluate
from ._config import CONFIG_ID, CONFIG_VERSION  # noqa: F401  (re-exported: the config names)
from ._config import as_vector as _as_vector
from .errors import DTypeError, LayoutError, StreamnormError
from .layout import Layout, parse_layout
from .stats import Stats, dtype_name

__all__ = ["MODES", "Normalizer"]

#: Modes of :meth:`Normalizer.from_stats`.
MODES = ("zscore", "minmax", "symmetric", "robust", "quantile")
#: Quantiles that ``mode="quantile"`` maps to -1 and +1 by default.
DEFAULT_QUANTILES = (0.01, 0.99)
_RANGE_MODES = _modes.RANGE_MODES

_NUMPY_TO_TORCH = {
    np.dtype(np.bool_): torch.bool,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.uint16): torch.uint16,
    np.dtype(np.uint32): torch.uint32,
    np.dtype(np.uint64): torch.uint64,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}
_TORCH_TO_NUMPY = {v: k for k, v in _NUMPY_TO_TORCH.items()}
_FLOAT_OUT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_OUT = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
            torch.uint16, torch.uint32)
# Inputs that addcmul reads directly (and CUDA kernels support for every op);
# others are converted to the compute dtype first.
_FUSED_IN = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64) + _FLOAT_OUT


def _torch_dtype(dtype: Any, what: str = "dtype") -> torch.dtype:
    """``torch.float16``, ``np.float16``, ``"float16"`` and ``"bfloat16"`` -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype == "bfloat16":
        return torch.bfloat16
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        raise DTypeError(f"{what}={dtype!r} is not a dtype; pass e.g. torch.float32") from None
    if np_dtype not in _NUMPY_TO_TORCH:
        raise DTypeError(f"{what}={dtype!r} is not a supported numeric dtype")
    return _NUMPY_TO_TORCH[np_dtype]


def _from_numpy(x: np.ndarray) -> torch.Tensor:
    """A CPU tensor of a numeric array, sharing its memory where torch allows."""
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    if x.dtype not in _NUMPY_TO_TORCH:
        raise DTypeError(f"cannot normalize an array of dtype {x.dtype}")
    if any(s < 0 for s in x.strides):
        x = np.ascontiguousarray(x)
    with warnings.catch_warnings():
        # Read-only arrays are never written to; torch warns regardless.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(x)


def _float_out(dtype: Any) -> torch.dtype:
    out = _torch_dtype(dtype)
    if out not in _FLOAT_OUT:
        raise DTypeError(
            f"normalized output must be floating, got dtype={dtype!r}; pass torch.float32, "
            f"torch.float16, torch.bfloat16 or torch.float64"
        )
    return out


def _resolve_device(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (TypeError, RuntimeError):
        raise StreamnormError(
            f"device={device!r} is not a device; pass e.g. 'cpu', 'cuda' or 'cuda:1'"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise StreamnormError(
                f"device {str(dev)!r} was asked for but CUDA is not available; pass device='cpu'"
            )
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _check_map(amap: AffineMap, names: Sequence[str]) -> None:
    """Finite parameters and a non-zero scale, or an error naming the feature."""
    scale, shift = amap.affine()
    parts = {"scale": scale, "shift": shift, "center": amap.center, "offset": amap.offset}
    for what, values in parts.items():
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise StreamnormError(
                f"the {what} of feature {names[i]!r} (index {i}) is {values[i]}; a normalizer "
                f"needs finite values (check the statistics or values it was built from)"
            )
    zero = np.flatnonzero(scale == 0)
    if zero.size:
        i = int(zero[0])
        raise StreamnormError(
            f"the scale of feature {names[i]!r} (index {i}) is 0; scale must be non-zero "
            f"(the map must be invertible)"
        )


_SIGNIFICAND_BITS = {torch.float32: 24, torch.float64: 53}


def _converts_exactly(dtype: torch.dtype, compute: torch.dtype) -> bool:
    """Whether every value of ``dtype`` is a value of the float ``compute`` dtype."""
    if dtype == torch.bool:
        return True
    if dtype.is_floating_point:
        return dtype in (torch.float16, torch.bfloat16, torch.float32, compute)
    return torch.iinfo(dtype).bits < _SIGNIFICAND_BITS[compute]


class Normalizer:
    """A per-feature affine map ``y = x * scale + shift`` applied on any device.

    Build one with :meth:`from_stats`, :meth:`from_store`, :meth:`from_range`,
    :meth:`from_mean_std` or :meth:`per_sample`; the constructor takes the
    float64 ``scale`` and ``shift`` directly.

    Parameters
    ----------
    scale, shift : array_like of float
        One value per feature (or one value for every element).
    layout : str
        Layout of the batches to normalize; its ``C``/``F`` axis holds the
        features. Defaults to ``"N"`` (no feature axis) for scalars and
        ``"NCHW"`` for per-feature values. Scalars apply to every element of
        any batch, whatever the layout.
    mode : str
        A label recorded in :meth:`get_config` (``"affine"`` by default).
    feature_names : sequence of str, optional
        One name per feature, used in error messages.
    source_dtype : str, optional
        The dtype of the data the map was fitted on (informational).

    Attributes
    ----------
    scale, shift : torch.Tensor
        float32 ``[F]`` on :attr:`device`.
    scale64, shift64 : torch.Tensor
        float64 ``[F]`` on :attr:`device`: the map in full precision.
    layout, mode, n_features, feature_names, device

    Notes
    -----
    The map is evaluated as ``(x - center) * scale + offset``, where the
    center is what the mode subtracts (the mean, the minimum, the median;
    0 for a map given as ``scale``/``shift``): that form does not cancel on
    data far from zero, and sends a range mode's minimum exactly to the low
    end. Arithmetic runs in float32, or in float64 when the output or the
    input is float64 (or the map's parameters overflow float32), whatever
    the shape of ``scale`` (one value or one per feature), and is rounded
    once to the output dtype. Range modes keep every
    input inside the fitted ``[min, max]`` inside ``[0, 1]`` (``[-1, 1]``) in
    every output dtype.

    Examples
    --------
    >>> import numpy as np, torch, streamnorm as sn
    >>> norm = sn.Normalizer.from_range(0, 255)        # uint8 -> [0, 1]
    >>> norm(torch.tensor([0, 51, 255], dtype=torch.uint8))
    tensor([0.0000, 0.2000, 1.0000])
    >>> norm(np.array([255], dtype=np.uint8), dtype="float16")
    array([1.], dtype=float16)
    >>> norm.inverse(torch.tensor([0.5]), dtype=torch.uint8)
    tensor([128], dtype=torch.uint8)
    """

    def __init__(
        self,
        scale: Any,
        shift: Any,
        layout: str | None = None,
        *,
        mode: str = "affine",
        feature_names: Sequence[str] | None = None,
        source_dtype: str | None = None,
    ) -> None:
        scale64 = _as_vector(scale, "scale")
        shift64 = _as_vector(shift, "shift")
        if scale64.shape != shift64.shape or scale64.size == 0:
            raise StreamnormError(
                f"scale and shift need the same, non-zero number of values; got "
                f"{scale64.size} and {shift64.size}"
            )
        scalar = np.ndim(scale) == 0 and np.ndim(shift) == 0
        amap = AffineMap(np.zeros_like(scale64), scale64, shift64)
        self._init_map(amap, scalar, layout, mode, feature_names, source_dtype)

    @classmethod
    def _from_map(
        cls,
        amap: AffineMap,
        scalar: bool,
        layout: str | None,
        mode: str,
        feature_names: Sequence[str] | None = None,
        source_dtype: str | None = None,
    ) -> Normalizer:
        self = cls.__new__(cls)
        self._init_map(amap, scalar, layout, mode, feature_names, source_dtype)
        return self

    def _init_map(
        self,
        amap: AffineMap,
        scalar: bool,
        layout: str | None,
        mode: str,
        feature_names: Sequence[str] | None,
        source_dtype: str | None,
    ) -> None:
        nf = amap.size
        if feature_names is None:
            names = tuple(str(i) for i in range(nf))
        else:
            names = tuple(str(n) for n in feature_names)
            if len(names) != nf:
                raise StreamnormError(f"{len(names)} feature names given for {nf} features")
        _check_map(amap, names)
        if layout is None:
            layout = "N" if scalar else "NCHW"
        lay = parse_layout(layout)
        if lay.feature_axis is None and nf != 1:
            raise LayoutError(
                f"layout {lay.text!r} has no feature axis but {nf} per-feature values were "
                f"given; use a layout with 'C' or 'F' (e.g. 'NCHW')"
            )
        self._setup(lay, mode, names, source_dtype, amap, None)
        # scalars apply to every element, whatever the batch's rank or layout
        self._scalar = bool(scalar)

    def _setup(
        self,
        layout: Layout,
        mode: str,
        feature_names: tuple[str, ...] | None,
        source_dtype: str | None,
        amap: AffineMap | None,
        per_sample: dict[str, Any] | None,
    ) -> None:
        self._layout = layout
        self._mode = str(mode)
        self._feature_names = feature_names
        self._source_dtype = None if source_dtype is None else dtype_name(source_dtype)
        self._map = amap
        self._scale_np, self._shift_np = (None, None) if amap is None else amap.affine()
        self._per_sample = per_sample
        self._scalar = False
        # (device, dtype, what) -> flat parameters; shared by every .to()
        # copy so that moving back and forth never transfers twice.
        self._cache: dict[tuple[torch.device, torch.dtype, str], tuple[Any, ...]] = {}
        self._bind(torch.device("cpu"))

    def _bind(self, device: torch.device) -> None:
        self._device = device
        if self._scale_np is None:
            self.scale = self.shift = self.scale64 = self.shift64 = None
            return
        self.scale, self.shift = self._documented(device, torch.float32)
        self.scale64, self.shift64 = self._documented(device, torch.float64)

    # -- constructors ---------------------------------------------------
    @classmethod
    def from_stats(
        cls,
        stats: Stats,
        mode: str = "zscore",
        ddof: int = 0,
        *,
        layout: str | None = None,
        quantiles: tuple[float, float] | None = None,
        clip: bool = False,
    ) -> Normalizer:
        """Fit the map to dataset statistics.

        Parameters
        ----------
        stats : Stats
            From :func:`~streamnorm.compute_stats` or a store.
        mode : {"zscore", "minmax", "symmetric", "robust", "quantile"}
            ``zscore``: ``(x - mean) / std``. ``minmax``: ``[min, max] -> [0, 1]``.
            ``symmetric``: ``[min, max] -> [-1, 1]``. ``robust``:
            ``(x - median) / IQR``. ``quantile``: ``[q_lo, q_hi] -> [-1, 1]``
            for the ``quantiles`` ``(lo, hi)``, as robot-learning pipelines
            normalize actions and states. ``robust`` and ``quantile`` need the
            distribution kept by ``histogram=True``.
        ddof : int
            Delta degrees of freedom of the std (``zscore`` only); 0 like
            numpy and scikit-learn.
        layout : str, optional
            Layout of the batches to normalize when it differs from the one
            the statistics were computed on (e.g. ``"NCHW"`` tensors with
            statistics of ``"NHWC"`` image files). Defaults to ``stats.layout``.
        quantiles : (float, float), optional
            ``mode="quantile"`` only: the quantiles mapped to -1 and +1;
            default ``(0.01, 0.99)``.
        clip : bool, default False
            ``mode="quantile"`` only: clamp outputs to [-1, 1]. The inverse
            is exact (to rounding) inside [-1, 1]; a clipped value goes back
            to the quantile at its bound (its original value is lost).

        Notes
        -----
        Constant features never give inf or NaN. As in scikit-learn,
        ``zscore`` uses scale 1 (so ``y = x - mean``, i.e. 0), ``minmax`` and
        ``symmetric`` use a range of 1 (so the constant maps to the low end:
        0, respectively -1), ``robust`` uses an IQR of 1 (``y = x - median``).
        Constancy is detected as scikit-learn's ``StandardScaler`` does (a
        variance below the rounding error bound) and, for ranges, a span below
        ``10 * eps``. Statistics that describe no feature are refused with a
        :class:`~streamnorm.StreamnormError` naming it: a NaN, infinite or
        negative variance, a non-finite mean, minimum, maximum or quartile
        (non-finite data kept by ``nan_policy="propagate"``, overflow, a
        damaged file), or no more values than ``ddof``.

        Examples
        --------
        >>> import numpy as np, streamnorm as sn
        >>> x = np.array([[0, 10], [2, 10], [4, 10]], dtype=np.uint8)
        >>> norm = sn.Normalizer.from_stats(sn.compute_stats([x], layout="NF"))
        >>> norm(x, dtype=np.float64).round(4).tolist()
        [[-1.2247, 0.0], [0.0, 0.0], [1.2247, 0.0]]
        >>> sn.Normalizer.from_stats(sn.compute_stats([x], layout="NF"), "minmax")(x).tolist()
        [[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]]
        >>> s = sn.compute_stats([np.arange(101, dtype=np.uint8).reshape(-1, 1)], layout="NF", histogram=True)
        >>> q = sn.Normalizer.from_stats(s, "quantile", quantiles=(0.1, 0.9), clip=True)
        >>> q(np.array([[0], [10], [50], [90], [100]], np.uint8)).ravel().tolist()
        [-1.0, -1.0, 0.0, 1.0, 1.0]
        """
        if not isinstance(stats, Stats):
            raise StreamnormError(
                f"from_stats needs a streamnorm.Stats, got {type(stats).__name__}; build one with "
                f"sn.compute_stats(...) or sn.load_stats(root, split)"
            )
        if mode not in MODES:
            raise StreamnormError(f"mode={mode!r} is not one of {list(MODES)}")
        if mode != "quantile" and (quantiles is not None or clip):
            raise StreamnormError(
                f"quantiles= and clip= belong to mode='quantile', not mode={mode!r}"
            )
        if not isinstance(clip, (bool, np.bool_)):
            raise StreamnormError(f"clip must be True or False, got {clip!r}")
        if isinstance(ddof, bool) or not isinstance(ddof, numbers.Integral) or ddof < 0:
            raise StreamnormError(f"ddof must be a non-negative integer, got {ddof!r}")
        empty = [name for name, n in zip(stats.feature_names, stats.count) if n == 0]
        if empty:
            raise StreamnormError(
                f"feature(s) {empty[:8]} have no values (count 0), so they cannot be "
                f"normalized; check the split and the nan_policy the statistics were built with"
            )
        if mode == "zscore":
            amap = _modes.zscore(stats, int(ddof))
        elif mode == "robust":
            amap = _modes.robust(stats)
        elif mode == "quantile":
            qs = _modes.check_quantiles(DEFAULT_QUANTILES if quantiles is None else quantiles)
            amap = _modes.quantile_map(stats, qs, bool(clip))
        else:
            amap = _modes.range_map(stats, mode)
        return cls._from_map(
            amap,
            False,
            stats.layout if layout is None else layout,
            mode,
            feature_names=stats.feature_names,
            source_dtype=stats.dtype,
        )

    @classmethod
    def from_store(
        cls,
        root: str,
        split: str = "train",
        mode: str = "zscore",
        ddof: int = 0,
        *,
        layout: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        quantiles: tuple[float, float] | None = None,
        clip: bool = False,
    ) -> Normalizer:
        """Fit the map to the statistics stored for ``split`` (the training split by default).

        ``root`` is any fsspec URL a :class:`~streamnorm.StatsStore` accepts;
        ``storage_options`` are passed to fsspec; the other arguments are
        :meth:`from_stats`'s. Normalizing validation and
        test data with the training split's statistics is what avoids leakage.

        Examples
        --------
        >>> import numpy as np, tempfile, streamnorm as sn
        >>> x = np.array([[0], [2], [4]], dtype=np.uint8)
        >>> with tempfile.TemporaryDirectory() as root:
        ...     _ = sn.save_stats(sn.compute_stats([x], layout="NF"), root, "train")
        ...     sn.Normalizer.from_store(root, mode="minmax")(x).ravel().tolist()
        [0.0, 0.5, 1.0]
        """
        from .store import load_stats  # the store pulls in pyarrow and fsspec

        stats = load_stats(root, split, storage_options=storage_options)
        return cls.from_stats(stats, mode=mode, ddof=ddof, layout=layout, quantiles=quantiles, clip=clip)

    @classmethod
    def from_range(
        cls,
        low: Any,
        high: Any,
        mode: str = "minmax",
        *,
        layout: str | None = None,
    ) -> Normalizer:
        """Map a known range to [0, 1] (``minmax``) or [-1, 1] (``symmetric``).

        Parameters
        ----------
        low, high : float or sequence of float
            Scalars (applied to every element; layout ``"N"``) or one value
            per feature (layout ``"NCHW"`` unless given).

        Examples
        --------
        >>> import torch, streamnorm as sn
        >>> norm = sn.Normalizer.from_range(0, 255, "symmetric")
        >>> norm(torch.tensor([0, 51, 255]), dtype=torch.float64).tolist()
        [-1.0, -0.6, 1.0]
        """
        if mode not in _RANGE_MODES:
            raise StreamnormError(
                f"from_range supports mode 'minmax' or 'symmetric', got {mode!r}; for "
                f"z-scores use from_stats or from_mean_std"
            )
        lo = _as_vector(low, "low")
        hi = _as_vector(high, "high")
        if lo.size != hi.size and min(lo.size, hi.size) != 1:
            raise StreamnormError(f"low has {lo.size} values but high has {hi.size}")
        lo, hi = np.broadcast_arrays(lo, hi)
        scalar = np.ndim(low) == 0 and np.ndim(high) == 0
        return cls._from_map(_modes.known_range(lo, hi, mode), scalar, layout, mode)

    @classmethod
    def from_mean_std(
        cls, mean: Any, std: Any, *, layout: str | None = None
    ) -> Normalizer:
        """``(x - mean) / std`` from known values (published constants, for instance).

        Examples
        --------
        >>> import torch, streamnorm as sn
        >>> norm = sn.Normalizer.from_mean_std([128.0, 64.0], [64.0, 32.0])   # layout NCHW
        >>> norm(torch.full((1, 2, 1, 1), 128, dtype=torch.uint8)).flatten().tolist()
        [0.0, 2.0]
        """
        m = _as_vector(mean, "mean")
        s = _as_vector(std, "std")
        if m.size != s.size and min(m.size, s.size) != 1:
            raise StreamnormError(f"mean has {m.size} values but std has {s.size}")
        m, s = np.broadcast_arrays(m, s)
        scalar = np.ndim(mean) == 0 and np.ndim(std) == 0
        return cls._from_map(_modes.mean_std(m, s), scalar, layout, "zscore")

    @classmethod
    def per_sample(
        cls, layout: str = "NCHW", *, eps: float = 1e-5, per_feature: bool = False
    ) -> Normalizer:
        """Standardize each sample by its own mean and std, on the batch's device.

        ``y = (x - mean_i) / sqrt(var_i + eps)`` where ``mean_i``/``var_i``
        (population variance) are taken over every axis of sample ``i``
        (the ``N`` axis indexes samples), or over every axis but the feature
        axis with ``per_feature=True`` (per sample *and* channel, like
        instance normalization). No statistics are stored, so there is no
        inverse. ``eps`` is in the units of the input.

        Examples
        --------
        >>> import torch, streamnorm as sn
        >>> norm = sn.Normalizer.per_sample("NF")
        >>> y = norm(torch.tensor([[0, 2], [10, 10]], dtype=torch.uint8))
        >>> y.round(decimals=4).tolist()
        [[-1.0, 1.0], [0.0, 0.0]]
        """
        lay = parse_layout(layout)
        if not (isinstance(eps, numbers.Real) and math.isfinite(eps) and eps >= 0):
            raise StreamnormError(f"eps must be a finite number >= 0, got {eps!r}")
        if per_feature and lay.feature_axis is None:
            raise LayoutError(f"per_feature=True needs a layout with 'C' or 'F', got {lay.text!r}")
        self = cls.__new__(cls)
        self._setup(lay, "per_sample", None, None, None,
                    {"eps": float(eps), "per_feature": bool(per_feature)})
        return self

    # -- properties -----------------------------------------------------
    @property
    def layout(self) -> str:
        """Layout of the batches this normalizer expects."""
        return self._layout.text

    @property
    def mode(self) -> str:
        """``"zscore"``, ``"minmax"``, ``"symmetric"``, ``"robust"``, ``"per_sample"`` or
        ``"affine"``."""
        return self._mode

    @property
    def n_features(self) -> int | None:
        """Number of features (``None`` for per-sample normalization)."""
        return None if self._scale_np is None else int(self._scale_np.size)

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        return self._feature_names

    @property
    def source_dtype(self) -> str | None:
        """dtype of the data the map was fitted on, when known."""
        return self._source_dtype

    @property
    def device(self) -> torch.device:
        """Device that :attr:`scale` and :attr:`shift` live on."""
        return self._device

    @property
    def eps(self) -> float | None:
        """``eps`` of per-sample normalization (``None`` otherwise)."""
        return None if self._per_sample is None else self._per_sample["eps"]

    def with_layout(self, layout: str) -> Normalizer:
        """The same map for batches of another layout (``"NHWC"`` stats on ``"NCHW"`` tensors).

        Examples
        --------
        >>> import streamnorm as sn
        >>> sn.Normalizer.from_mean_std([1.0, 2.0], [1.0, 1.0], layout="NHWC").with_layout(
        ...     "NCHW").layout
        'NCHW'
        """
        lay = parse_layout(layout)
        if self._per_sample is not None:
            return Normalizer.per_sample(lay.text, **self._per_sample).to(self._device)
        if lay.feature_axis is None and self.n_features != 1:
            raise LayoutError(
                f"layout {lay.text!r} has no feature axis; this normalizer has "
                f"{self.n_features} features"
            )
        new = copy.copy(self)
        new._layout = lay
        return new

    # -- devices --------------------------------------------------------
    def _documented(self, device: torch.device, dtype: torch.dtype) -> tuple[Any, ...]:
        """The documented ``(scale, shift)`` as flat ``dtype`` tensors on ``device``."""
        key = (device, dtype, "affine")
        hit = self._cache.get(key)
        if hit is None:
            # A blocking copy: finished before any stream can read it.
            hit = tuple(torch.tensor(v, dtype=dtype).to(device)
                        for v in (self._scale_np, self._shift_np))
            self._cache[key] = hit
        return hit

    def _evaluation(
        self, device: torch.device, dtype: torch.dtype, inverse: bool, exact_inputs: bool
    ) -> tuple[Any, ...]:
        """Flat ``(center, scale, offset)`` in the compute ``dtype`` on ``device``.

        ``center``/``offset`` are ``None`` where every value is 0, which
        spares a pass over the batch and changes no result.
        """
        exact_inputs = exact_inputs and self._map.upper_is_bound and not inverse  # else the same
        key = (device, dtype, ("inverse" if inverse else "forward") + ("-exact" * exact_inputs))
        hit = self._cache.get(key)
        if hit is None:
            amap = self._map.inverse() if inverse else self._map
            hit = tuple(
                None if i != 1 and not np.any(v) else torch.tensor(v, dtype=dtype).to(device)
                for i, v in enumerate(amap.params(dtype, exact_inputs))
            )
            self._cache[key] = hit
        return hit

    def to(self, device: Any) -> Normalizer:
        """This normalizer with :attr:`scale`/:attr:`shift` on ``device`` (moved once).

        The result shares this normalizer's per-device cache: batches on any
        device already seen never trigger another transfer.

        Examples
        --------
        >>> import streamnorm as sn
        >>> sn.Normalizer.from_range(0, 255).to("cpu").scale.device.type
        'cpu'
        """
        dev = _resolve_device(device)
        if dev == self._device:
            return self
        new = copy.copy(self)
        new._bind(dev)
        return new

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}
        for name in ("scale", "shift", "scale64", "shift64"):
            state[name] = None
        state["_device"] = torch.device("cpu")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._bind(torch.device("cpu"))

    # -- shapes ---------------------------------------------------------
    def _feature_dim(self, x: torch.Tensor) -> int | None:
        """Axis of ``x`` holding the features; checks rank and feature count."""
        lay = self._layout
        if self._scalar or (lay.feature_axis is None and self._per_sample is None):
            return None  # one scale/shift for every element, any rank
        if x.ndim == lay.ndim:
            offset = 0
        elif lay.text[0] == "N" and x.ndim == lay.ndim - 1:
            offset = 1
        else:
            one = f" (or {lay.ndim - 1} for one sample)" if lay.text[0] == "N" else ""
            raise LayoutError(
                f"batch of shape {tuple(x.shape)} has {x.ndim} dimension(s) but the normalizer's "
                f"layout {lay.text!r} needs {lay.ndim}{one}; build the normalizer with the "
                f"layout of your batches (Normalizer.with_layout)"
            )
        if lay.feature_axis is None:
            return None
        dim = lay.feature_axis - offset
        nf = self.n_features
        if nf is not None and x.shape[dim] != nf:
            raise LayoutError(
                f"batch of shape {tuple(x.shape)} has {x.shape[dim]} features on axis {dim} "
                f"({lay.text[lay.feature_axis]!r} of layout {lay.text!r}) but the normalizer "
                f"has {nf}; check the layout (NCHW vs NHWC) and the statistics' features"
            )
        return dim

    def _fits_float32(self, inverse: bool) -> bool:
        """Whether the map's float32 parameters are finite, with a non-zero scale."""
        key = (torch.device("cpu"), torch.float32, "fits-inverse" if inverse else "fits")
        hit = self._cache.get(key)
        if hit is None:
            amap = self._map.inverse() if inverse else self._map
            with np.errstate(all="ignore"):  # what overflows is what this finds
                center, scale, offset = amap.params(torch.float32)
            ok = all(np.isfinite(v).all() for v in (center, scale, offset)) and np.all(scale != 0)
            hit = self._cache[key] = (bool(ok),)
        return hit[0]

    def _broadcast(self, x: torch.Tensor, dtype: torch.dtype, inverse: bool) -> list[Any]:
        """The evaluation parameters shaped to broadcast against ``x``, with at least its rank.

        Never fewer dimensions than ``x``: type promotion ignores the dtype of
        a lower-rank tensor of the same kind, so a 0-dim float32 scale would
        leave a bfloat16 batch computed in bfloat16.
        """
        dim = self._feature_dim(x)
        if dim is None:
            shape: tuple[int, ...] = (1,) * x.ndim
        else:
            shape = (-1,) + (1,) * (x.ndim - 1 - dim)
        return [None if p is None else p.view(shape)
                for p in self._evaluation(x.device, dtype, inverse, _converts_exactly(x.dtype, dtype))]

    # -- application ----------------------------------------------------
    def __call__(
        self, x: Any, dtype: Any = torch.float32, *, out: torch.Tensor | None = None
    ) -> Any:
        """Normalize ``x`` (torch in -> torch out on its device; numpy in -> numpy out).

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray
            Any real dtype (uint8, other integers, bool, floats).
        dtype : torch.dtype or numpy dtype
            Output dtype: float32 (default), float16, bfloat16 (torch only)
            or float64. Arithmetic is float32, or float64 when the output or
            input is float64, rounded once to ``dtype``. The output has the
            input's memory layout (channels_last stays channels_last).
        out : torch.Tensor, optional
            A preallocated result (same shape and device as ``x``, floating);
            its dtype is the output dtype. Reusing one buffer spares the page
            faults of a fresh large CPU allocation per batch.

        Examples
        --------
        >>> import torch, streamnorm as sn
        >>> norm = sn.Normalizer.from_range(0, 255)
        >>> buf = torch.empty(2, dtype=torch.float16)
        >>> norm(torch.tensor([0, 255], dtype=torch.uint8), out=buf) is buf
        True
        """
        if out is not None:
            if not (isinstance(out, torch.Tensor) and isinstance(x, torch.Tensor)):
                raise DTypeError("out= takes a torch.Tensor, for a torch.Tensor input")
            if out.shape != x.shape or out.device != x.device:
                raise StreamnormError(
                    f"out has shape {tuple(out.shape)} on {out.device}; it needs the input's "
                    f"shape {tuple(x.shape)} on {x.device}"
                )
            if self._per_sample is not None:
                raise StreamnormError("out= is not supported for per-sample normalization")
            dtype = out.dtype
        out_dtype = _float_out(dtype)
        if isinstance(x, np.ndarray):
            return self._numpy(x, out_dtype, inverse=False)
        x = self._check_tensor(x)
        if self._per_sample is not None:
            return self._per_sample_apply(x, out_dtype)
        compute = torch.float64 if torch.float64 in (out_dtype, x.dtype) else torch.float32
        return self._affine(x, out_dtype, compute, inverse=False, out=out)

    def inverse(self, y: Any, dtype: Any = None) -> Any:
        """Map normalized values back to the source scale.

        Parameters
        ----------
        y : torch.Tensor or numpy.ndarray
        dtype : dtype, optional
            ``None``: float32 (float64 for float64 ``y``). A float dtype: that
            dtype. An integer dtype (e.g. ``torch.uint8``): rounded to nearest
            (ties to even), clamped to the dtype's range, NaN mapped to 0,
            which is what saving or comparing a decoder's output needs.

        Examples
        --------
        >>> import torch, streamnorm as sn
        >>> norm = sn.Normalizer.from_range(0, 255)
        >>> norm.inverse(torch.tensor([-0.5, 0.2, 7.0]), dtype=torch.uint8).tolist()
        [0, 51, 255]
        """
        if self._per_sample is not None:
            raise StreamnormError(
                "per-sample normalization cannot be inverted: each sample's mean and std are "
                "not kept; use a statistics-based mode (from_stats) if you need the inverse"
            )
        is_numpy = isinstance(y, np.ndarray)
        if dtype is None:
            y_dtype = _NUMPY_TO_TORCH.get(y.dtype) if is_numpy else getattr(y, "dtype", None)
            target = torch.float64 if y_dtype == torch.float64 else torch.float32
        else:
            target = _torch_dtype(dtype)
        if target not in _FLOAT_OUT and target not in _INT_OUT:
            raise DTypeError(
                f"inverse dtype must be floating or an integer type up to 64 bits, got {dtype!r}"
            )
        if is_numpy:
            return self._numpy(y, target, inverse=True)
        y = self._check_tensor(y)
        if target in _FLOAT_OUT:
            compute = torch.float64 if torch.float64 in (target, y.dtype) else torch.float32
            return self._affine(y, target, compute, inverse=True)
        bits = torch.iinfo(target).bits
        compute = torch.float32 if bits <= 16 else torch.float64
        if y.dtype == torch.float64:
            compute = torch.float64
        tmp = self._affine(y, compute, compute, inverse=True)
        info = torch.iinfo(target)
        hi = float(info.max)
        tmp = torch.nan_to_num(tmp.round(), nan=0.0)
        if int(hi) > info.max:  # int64: 2**63 - 1 rounds up to 2**63 in float64
            top = tmp >= hi
            out = tmp.clamp_(float(info.min), math.nextafter(hi, 0.0)).to(target)
            return out.masked_fill_(top, info.max)
        return tmp.clamp_(float(info.min), hi).to(target)

    def _check_tensor(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise DTypeError(
                f"expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}"
            )
        if x.is_complex() or (x.dtype not in _TORCH_TO_NUMPY and x.dtype != torch.bfloat16):
            raise DTypeError(f"cannot normalize a tensor of dtype {x.dtype}")
        return x

    def _affine(
        self,
        x: torch.Tensor,
        out_dtype: torch.dtype,
        compute: torch.dtype,
        inverse: bool,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if compute == torch.float32 and not self._fits_float32(inverse):
            compute = torch.float64  # e.g. the scale of a feature whose std is 1e-45
        center, scale, offset = self._broadcast(x, compute, inverse)
        if x.dtype not in _FUSED_IN:
            x = x.to(compute)
        clip = None if inverse else self._map.clip
        return evaluate(x, center, scale, offset, out_dtype, compute, out, clip)

    def _per_sample_apply(self, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        lay = self._layout
        feature_dim = self._feature_dim(x)  # also checks the rank
        sample_dim = lay.text.index("N") if "N" in lay.text and x.ndim == lay.ndim else None
        keep = {sample_dim}
        if self._per_sample["per_feature"]:
            keep.add(feature_dim)
        dims = [d for d in range(x.ndim) if d not in keep]
        compute = torch.float64 if torch.float64 in (out_dtype, x.dtype) else torch.float32
        xf = x.to(compute)
        if not dims:
            raise LayoutError(
                f"per-sample normalization of layout {lay.text!r} has no axis to reduce"
            )
        var, mean = torch.var_mean(xf, dim=dims, correction=0, keepdim=True)
        inv = torch.rsqrt(var + self._per_sample["eps"])
        inv = torch.where(var > 0, inv, torch.zeros_like(inv))  # constant sample -> 0
        out = torch.empty_like(x, dtype=out_dtype)
        return torch.mul(xf - mean, inv, out=out)

    def _numpy(self, x: np.ndarray, out_dtype: torch.dtype, inverse: bool) -> np.ndarray:
        if out_dtype not in _TORCH_TO_NUMPY:
            raise DTypeError(
                f"numpy has no {out_dtype}; pass a torch.Tensor for {out_dtype} output or "
                f"ask for float32/float16/float64"
            )
        t = _from_numpy(x)
        out = self.inverse(t, out_dtype) if inverse else self(t, out_dtype)
        return out.numpy()

    # -- configuration ---------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """A JSON-safe description from which :meth:`from_config` rebuilds this normalizer.

        Floats are stored as JSON numbers that round-trip exactly (see
        :mod:`streamnorm._config` for the fields).

        Examples
        --------
        >>> import json, streamnorm as sn
        >>> cfg = sn.Normalizer.from_range(0, 255).get_config()
        >>> cfg["mode"], cfg["layout"]
        ('minmax', 'N')
        >>> sn.Normalizer.from_config(json.loads(json.dumps(cfg))).get_config() == cfg
        True
        """
        return _config.to_config(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Normalizer:
        """Rebuild a normalizer from :meth:`get_config` output."""
        return _config.from_config(cls, config)

    def __repr__(self) -> str:
        if self._per_sample is not None:
            return (
                f"Normalizer.per_sample(layout={self.layout!r}, eps={self.eps}, "
                f"per_feature={self._per_sample['per_feature']})"
            )
        return (
            f"Normalizer(mode={self.mode!r}, layout={self.layout!r}, "
            f"n_features={self.n_features}, device={str(self.device)!r})"
        )
