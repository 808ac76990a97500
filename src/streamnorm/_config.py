"""A :class:`~streamnorm.Normalizer` as JSON-safe config, and back.

Fields: ``id`` (``"streamnorm.Normalizer"``), ``version``, ``mode``,
``layout``; per-sample normalizers add ``eps`` and ``per_feature``. Every
other normalizer has ``feature_names``, ``source_dtype`` and the documented
map ``scale`` and ``shift`` (``y = x * scale + shift``). Maps evaluated about
a center add ``center`` and ``offset`` (``y = (x - center) * scale + offset``),
and where needed ``center_lo`` (the center's part below float64's
resolution), ``upper`` and ``width`` (a range map's high end and target
width; ``upper_is_bound`` for a given range) and ``clip`` (the output
interval the result is clamped to: ``mode="quantile", clip=True``). Per-feature
values are lists; a map given as scalars stores numbers.

A config that clips is version 2, so that a streamnorm that does not know
``clip`` refuses it instead of returning unclipped values; every other config
is version 1, as before, and loads in older versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._affine import AffineMap
from .errors import StreamnormError

__all__ = ["CONFIG_ID", "CONFIG_VERSION", "as_vector", "from_config", "to_config"]

CONFIG_ID = "streamnorm.Normalizer"
#: The newest config version this code reads (and writes, for clipping maps).
CONFIG_VERSION = 2


def as_vector(values: Any, name: str) -> np.ndarray:
    """``values`` as a flat float64 array (a scalar gives one value).

    Examples
    --------
    >>> as_vector(2, "scale").tolist(), as_vector([1, 2], "shift").tolist()
    ([2.0], [1.0, 2.0])
    """
    try:
        arr = np.array(values, dtype=np.float64, copy=True)
    except (TypeError, ValueError):
        raise StreamnormError(f"{name} must be numbers, got {values!r}") from None
    if arr.ndim > 1:
        raise StreamnormError(f"{name} must be a scalar or a 1-D sequence, got shape {arr.shape}")
    return arr.reshape(-1)


def _clip(values: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in values)
    except (TypeError, ValueError):
        raise StreamnormError(f"config field 'clip' must be [low, high], got {values!r}") from None
    if not low < high:
        raise StreamnormError(f"config field 'clip' must have low < high, got {values!r}")
    return low, high


def map_of(config: Mapping[str, Any]) -> AffineMap:
    """The evaluated map of a config that has ``center``."""
    fields = {name: as_vector(config[name], name) for name in ("center", "scale", "offset")}
    for name in ("center_lo", "upper"):
        if config.get(name) is not None:
            fields[name] = as_vector(config[name], name)
    sizes = {v.size for v in fields.values()}
    if len(sizes) != 1:
        raise StreamnormError(f"config fields {sorted(fields)} need one value per feature each")
    width = config.get("width")
    if ("upper" in fields) != (width is not None):
        raise StreamnormError("config fields 'upper' and 'width' go together")
    clip = None if config.get("clip") is None else _clip(config["clip"])
    amap = AffineMap(**fields, width=None if width is None else float(width),
                     upper_is_bound=config.get("upper_is_bound") is True, clip=clip)
    shift = as_vector(config["shift"], "shift")
    with np.errstate(all="ignore"):
        agree = shift.shape == amap.affine()[1].shape and np.array_equal(shift, amap.affine()[1])
    if not agree:
        raise StreamnormError(
            "the config's shift disagrees with its center, scale and offset; it was edited "
            "or damaged: rebuild it with get_config()"
        )
    return amap


def to_config(norm: Any) -> dict[str, Any]:
    """The config of a normalizer (see the module docstring)."""
    amap = norm._map
    clips = amap is not None and amap.clip is not None
    config: dict[str, Any] = {
        "id": CONFIG_ID,
        "version": 2 if clips else 1,
        "mode": norm._mode,
        "layout": norm._layout.text,
    }
    if norm._per_sample is not None:
        config.update(norm._per_sample)
        return config
    config.update(
        feature_names=list(norm._feature_names or ()),
        source_dtype=norm._source_dtype,
        scale=norm._scale_np,
        shift=norm._shift_np,
    )
    if np.any(amap.center) or amap.center_lo is not None or amap.upper is not None or clips:
        # How the map is evaluated (see Notes of Normalizer); readers that
        # know only scale and shift still get the same map.
        config.update(center=amap.center, offset=amap.offset)
        if amap.center_lo is not None:
            config["center_lo"] = amap.center_lo
        if amap.upper is not None:
            config.update(upper=amap.upper, width=amap.width)
            if amap.upper_is_bound:
                config["upper_is_bound"] = True
        if clips:
            config["clip"] = [float(v) for v in amap.clip]
    for name, values in config.items():
        if isinstance(values, np.ndarray):
            # a number, not a list, for scalars: applies to every element
            config[name] = float(values[0]) if norm._scalar else [float(v) for v in values]
    return config


def from_config(cls: Any, config: Mapping[str, Any]) -> Any:
    """Rebuild a normalizer of class ``cls`` from :func:`to_config` output."""
    if not isinstance(config, Mapping) or config.get("id") != CONFIG_ID:
        raise StreamnormError(f"not a streamnorm Normalizer config (expected id {CONFIG_ID!r})")
    version = config.get("version")
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise StreamnormError(
            f"Normalizer config version {version!r} is newer than this streamnorm "
            f"understands ({CONFIG_VERSION}); upgrade streamnorm"
        )
    try:
        if config["mode"] == "per_sample":
            return cls.per_sample(config["layout"], eps=config["eps"], per_feature=config["per_feature"])
        names = config.get("feature_names") or None
        if "center" not in config:  # a map given as scale and shift
            return cls(config["scale"], config["shift"], layout=config["layout"], mode=config["mode"],
                       feature_names=names, source_dtype=config.get("source_dtype"))
        amap = map_of(config)
    except KeyError as exc:
        raise StreamnormError(f"Normalizer config lacks the field {exc.args[0]!r}") from None
    scalar = np.ndim(config["scale"]) == 0
    return cls._from_map(amap, scalar, config["layout"], config["mode"], names, config.get("source_dtype"))
