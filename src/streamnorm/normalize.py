"""Normalization as one affine map per feature: ``y = x * scale + shift``.

z-score, min-max to [0, 1], [-1, 1], robust (median/IQR) and known ranges
(0..255) all reduce to a per-feature ``scale`` and ``shift``. They are computed
once in float64 from :class:`~streamnorm.Stats` (or a range), kept as float32
and float64 tensors, moved to a device once, and applied in one fused
elementwise pass (``torch.addcmul`` into an output allocated like the input,
so a channels_last batch stays channels_last). The inverse is the same kind of
map with ``1/scale`` and ``-shift/scale``.

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

from .errors import DTypeError, LayoutError, StreamnormError
from .layout import Layout, parse_layout
from .stats import Stats

__all__ = ["MODES", "Normalizer"]

#: Modes of :meth:`Normalizer.from_stats`.
MODES = ("zscore", "minmax", "symmetric", "robust")
_RANGE_MODES = {"minmax": (0.0, 1.0), "symmetric": (-1.0, 1.0)}
CONFIG_ID = "streamnorm.Normalizer"
CONFIG_VERSION = 1

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


def _as_vector(values: Any, name: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float64, copy=True)
    if arr.ndim > 1:
        raise StreamnormError(f"{name} must be a scalar or a 1-D sequence, got shape {arr.shape}")
    return arr.reshape(-1)


def _constant_mask(var: np.ndarray, mean: np.ndarray, n: np.ndarray) -> np.ndarray:
    # scikit-learn's _is_constant_feature: a variance within the rounding error
    # bound of the two-pass algorithm is indistinguishable from zero.
    eps = np.finfo(np.float64).eps
    n = n.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        bound = n * eps * var + (n * mean * eps) ** 2
        return ~(var > bound)  # NaN variance (count <= ddof) counts as constant


def _safe_range(rng: np.ndarray) -> np.ndarray:
    # scikit-learn's _handle_zeros_in_scale (MinMaxScaler, RobustScaler).
    return np.where(rng < 10 * np.finfo(np.float64).eps, 1.0, rng)


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
        float64 ``[F]`` on :attr:`device`, used when float64 output is asked for.
    layout, mode, n_features, feature_names, device

    Notes
    -----
    Arithmetic runs in float32 (float64 when the output or the input is
    float64) and is rounded once to the output dtype. For float input whose
    ``|mean|`` is many orders above its ``std``, ``x * scale + shift`` in
    float32 cancels digits; ask for ``dtype=torch.float64`` there.

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
        if not (np.all(np.isfinite(scale64)) and np.all(np.isfinite(shift64))):
            raise StreamnormError("scale and shift must be finite")
        if np.any(scale64 == 0):
            raise StreamnormError("scale must be non-zero (the map must be invertible)")
        is_scalar = np.ndim(scale) == 0 and np.ndim(shift) == 0
        if layout is None:
            layout = "N" if is_scalar else "NCHW"
        lay = parse_layout(layout)
        nf = scale64.size
        if lay.feature_axis is None and nf != 1:
            raise LayoutError(
                f"layout {lay.text!r} has no feature axis but {nf} per-feature values were "
                f"given; use a layout with 'C' or 'F' (e.g. 'NCHW')"
            )
        if feature_names is None:
            names = tuple(str(i) for i in range(nf))
        else:
            names = tuple(str(n) for n in feature_names)
            if len(names) != nf:
                raise StreamnormError(f"{len(names)} feature names given for {nf} features")
        scale64.setflags(write=False)
        shift64.setflags(write=False)
        self._setup(lay, mode, names, source_dtype, scale64, shift64, None)
        # scalars apply to every element, whatever the batch's rank or layout
        self._scalar = bool(is_scalar)

    def _setup(
        self,
        layout: Layout,
        mode: str,
        feature_names: tuple[str, ...] | None,
        source_dtype: str | None,
        scale64: np.ndarray | None,
        shift64: np.ndarray | None,
        per_sample: dict[str, Any] | None,
    ) -> None:
        self._layout = layout
        self._mode = str(mode)
        self._feature_names = feature_names
        self._source_dtype = None if source_dtype is None else np.dtype(source_dtype).name
        self._scale_np = scale64
        self._shift_np = shift64
        self._per_sample = per_sample
        self._scalar = False
        # (device, dtype, inverse) -> flat (scale, shift); shared by every
        # .to() copy so that moving back and forth never transfers twice.
        self._cache: dict[tuple[torch.device, torch.dtype, bool], tuple[torch.Tensor, ...]] = {}
        self._bind(torch.device("cpu"))

    def _bind(self, device: torch.device) -> None:
        self._device = device
        if self._scale_np is None:
            self.scale = self.shift = self.scale64 = self.shift64 = None
            return
        self.scale, self.shift = self._params(device, torch.float32, False)
        self.scale64, self.shift64 = self._params(device, torch.float64, False)

    # -- constructors ---------------------------------------------------
    @classmethod
    def from_stats(
        cls,
        stats: Stats,
        mode: str = "zscore",
        ddof: int = 0,
        *,
        layout: str | None = None,
    ) -> Normalizer:
        """Fit the map to dataset statistics.

        Parameters
        ----------
        stats : Stats
            From :func:`~streamnorm.compute_stats` or a store.
        mode : {"zscore", "minmax", "symmetric", "robust"}
            ``zscore``: ``(x - mean) / std``. ``minmax``: ``[min, max] -> [0, 1]``.
            ``symmetric``: ``[min, max] -> [-1, 1]``. ``robust``:
            ``(x - median) / IQR`` from the exact histogram (8-bit data
            accumulated with ``histogram=True``).
        ddof : int
            Delta degrees of freedom of the std (``zscore`` only); 0 like
            numpy and scikit-learn.
        layout : str, optional
            Layout of the batches to normalize when it differs from the one
            the statistics were computed on (e.g. ``"NCHW"`` tensors with
            statistics of ``"NHWC"`` image files). Defaults to ``stats.layout``.

        Notes
        -----
        Constant features never give inf or NaN. As in scikit-learn,
        ``zscore`` uses scale 1 (so ``y = x - mean``, i.e. 0), ``minmax`` and
        ``symmetric`` use a range of 1 (so the constant maps to the low end:
        0, respectively -1), ``robust`` uses an IQR of 1 (``y = x - median``).
        Constancy is detected as scikit-learn's ``StandardScaler`` does (a
        variance below the rounding error bound) and, for ranges, a span below
        ``10 * eps``.

        Examples
        --------
        >>> import numpy as np, streamnorm as sn
        >>> x = np.array([[0, 10], [2, 10], [4, 10]], dtype=np.uint8)
        >>> norm = sn.Normalizer.from_stats(sn.compute_stats([x], layout="NF"))
        >>> norm(x, dtype=np.float64).round(4).tolist()
        [[-1.2247, 0.0], [0.0, 0.0], [1.2247, 0.0]]
        >>> sn.Normalizer.from_stats(sn.compute_stats([x], layout="NF"), "minmax")(x).tolist()
        [[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]]
        """
        if not isinstance(stats, Stats):
            raise StreamnormError(
                f"from_stats needs a streamnorm.Stats, got {type(stats).__name__}; build one with "
                f"sn.compute_stats(...) or sn.load_stats(root, split)"
            )
        if mode not in MODES:
            raise StreamnormError(f"mode={mode!r} is not one of {list(MODES)}")
        if not isinstance(ddof, numbers.Integral) or ddof < 0:
            raise StreamnormError(f"ddof must be a non-negative integer, got {ddof!r}")
        empty = [name for name, n in zip(stats.feature_names, stats.count) if n == 0]
        if empty:
            raise StreamnormError(
                f"feature(s) {empty[:8]} have no values (count 0), so they cannot be "
                f"normalized; check the split and the nan_policy the statistics were built with"
            )
        if mode == "zscore":
            var = stats.variance(int(ddof))
            const = _constant_mask(var, stats.mean, stats.count)
            std = np.where(const, 1.0, np.sqrt(np.where(const, 1.0, var)))
            scale = 1.0 / std
            shift = -stats.mean / std
        elif mode == "robust":
            if stats.histogram is None:
                raise StreamnormError(
                    "mode='robust' needs the median and IQR, which only the exact histogram "
                    "gives; accumulate 8-bit data with StatsAccumulator(..., histogram=True) "
                    "(or use mode='zscore' or 'minmax')"
                )
            q1, med, q3 = stats.quantile([0.25, 0.5, 0.75])
            iqr = _safe_range(q3 - q1)
            scale = 1.0 / iqr
            shift = -med / iqr
        else:
            low, high = _RANGE_MODES[mode]
            scale = (high - low) / _safe_range(stats.max - stats.min)
            shift = low - stats.min * scale
        return cls(
            scale,
            shift,
            layout=stats.layout if layout is None else layout,
            mode=mode,
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
    ) -> Normalizer:
        """Fit the map to the statistics stored for ``split`` (the training split by default).

        ``root`` is any fsspec URL a :class:`~streamnorm.StatsStore` accepts;
        ``storage_options`` are passed to fsspec. Normalizing validation and
        test data with the training split's statistics is what avoids leakage.

        Examples
        --------
        >>> import numpy as np, tempfile, streamnorm as sn
        >>> root = tempfile.mkdtemp()
        >>> x = np.array([[0], [2], [4]], dtype=np.uint8)
        >>> _ = sn.save_stats(sn.compute_stats([x], layout="NF"), root, "train")
        >>> sn.Normalizer.from_store(root, mode="minmax")(x).ravel().tolist()
        [0.0, 0.5, 1.0]
        """
        from .store import load_stats  # the store pulls in pyarrow and fsspec

        stats = load_stats(root, split, storage_options=storage_options)
        return cls.from_stats(stats, mode=mode, ddof=ddof, layout=layout)

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
        bad = ~(np.isfinite(lo) & np.isfinite(hi) & (hi > lo))
        if np.any(bad):
            i = int(np.argmax(bad))
            raise StreamnormError(
                f"the range of feature {i} is [{lo[i]}, {hi[i]}]; it needs finite low < high"
            )
        a, b = _RANGE_MODES[mode]
        scale = (b - a) / (hi - lo)
        shift = a - lo * scale
        scalar = np.ndim(low) == 0 and np.ndim(high) == 0
        if scalar:
            scale, shift = scale[0], shift[0]
        return cls(scale, shift, layout=layout, mode=mode)

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
        if not (np.all(np.isfinite(m)) and np.all(np.isfinite(s)) and np.all(s > 0)):
            raise StreamnormError("mean must be finite and std finite and > 0")
        scale, shift = 1.0 / s, -m / s
        if np.ndim(mean) == 0 and np.ndim(std) == 0:
            scale, shift = scale[0], shift[0]
        return cls(scale, shift, layout=layout, mode="zscore")

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
        self._setup(lay, "per_sample", None, None, None, None,
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
    def _params(
        self, device: torch.device, dtype: torch.dtype, inverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype, inverse)
        hit = self._cache.get(key)
        if hit is None:
            if inverse:
                scale = 1.0 / self._scale_np
                shift = -self._shift_np / self._scale_np
            else:
                scale, shift = self._scale_np, self._shift_np
            # A blocking copy: finished before any stream can read it.
            hit = (
                torch.tensor(scale, dtype=dtype).to(device),
                torch.tensor(shift, dtype=dtype).to(device),
            )
            self._cache[key] = hit
        return hit  # type: ignore[return-value]

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

    def _broadcast(
        self, x: torch.Tensor, dtype: torch.dtype, inverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self._feature_dim(x)
        scale, shift = self._params(x.device, dtype, inverse)
        if dim is None:
            return scale.reshape(()), shift.reshape(())
        shape = (-1,) + (1,) * (x.ndim - 1 - dim)
        return scale.view(shape), shift.view(shape)

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
        scale, shift = self._broadcast(x, compute, inverse)
        if x.dtype not in _FUSED_IN:
            x = x.to(compute)
        if x.requires_grad and torch.is_grad_enabled() and out is None:
            # out= does not record autograd; a decoder's output keeps its graph.
            return torch.addcmul(shift, x, scale).to(out_dtype)
        if x.device.type == "cpu":
            # torch's CPU addcmul neither vectorizes mixed dtypes nor (C,1,1)
            # broadcasts well; convert, then two vectorized in-place passes
            # (3-4x faster). Same float32 arithmetic, one rounding at the end.
            direct = out is not None and out.dtype == compute
            tmp = out if direct else torch.empty_like(x, dtype=compute)
            tmp.copy_(x)
            tmp.mul_(scale).add_(shift)
            if direct or (out is None and out_dtype == compute):
                return tmp
            return tmp.to(out_dtype) if out is None else out.copy_(tmp)
        # On accelerators one fused pass: x read once in its own dtype,
        # promoted to `compute`, written once in `out_dtype`, in x's memory format.
        if out is None:
            out = torch.empty_like(x, dtype=out_dtype)
        return torch.addcmul(shift, x, scale, out=out)

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

        Floats are stored as JSON numbers that round-trip exactly.

        Examples
        --------
        >>> import json, streamnorm as sn
        >>> cfg = sn.Normalizer.from_range(0, 255).get_config()
        >>> cfg["mode"], cfg["layout"]
        ('minmax', 'N')
        >>> sn.Normalizer.from_config(json.loads(json.dumps(cfg))).get_config() == cfg
        True
        """
        config: dict[str, Any] = {
            "id": CONFIG_ID,
            "version": CONFIG_VERSION,
            "mode": self._mode,
            "layout": self._layout.text,
        }
        if self._per_sample is not None:
            config.update(self._per_sample)
            return config
        config.update(
            feature_names=list(self._feature_names or ()),
            source_dtype=self._source_dtype,
            scale=[float(v) for v in self._scale_np],
            shift=[float(v) for v in self._shift_np],
        )
        if self._scalar:  # a number, not a list: applies to every element
            config.update(scale=config["scale"][0], shift=config["shift"][0])
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Normalizer:
        """Rebuild a normalizer from :meth:`get_config` output."""
        if not isinstance(config, Mapping) or config.get("id") != CONFIG_ID:
            raise StreamnormError(
                f"not a streamnorm Normalizer config (expected id {CONFIG_ID!r})"
            )
        version = config.get("version")
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise StreamnormError(
                f"Normalizer config version {version!r} is newer than this streamnorm "
                f"understands ({CONFIG_VERSION}); upgrade streamnorm"
            )
        try:
            if config["mode"] == "per_sample":
                return cls.per_sample(
                    config["layout"], eps=config["eps"], per_feature=config["per_feature"]
                )
            return cls(
                config["scale"],
                config["shift"],
                layout=config["layout"],
                mode=config["mode"],
                feature_names=config.get("feature_names") or None,
                source_dtype=config.get("source_dtype"),
            )
        except KeyError as exc:
            raise StreamnormError(f"Normalizer config lacks the field {exc.args[0]!r}") from None

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
