"""streamnorm: exact one-pass dataset statistics, per-split Parquet stores and
GPU-side normalization for PyTorch pipelines.

``import streamnorm`` stays light: the statistics core is imported eagerly, the
adapters (store, normalizer, device loader, torchdata nodes) on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .accumulate import StatsAccumulator, compute_stats
from .errors import (
    DTypeError,
    IncompatibleStatsError,
    LayoutError,
    MaskError,
    NonFiniteError,
    SplitNameError,
    StatsFileError,
    StreamnormError,
)
from .stats import Stats

_LAZY = {
    "StatsStore": "store",
    "save_stats": "store",
    "load_stats": "store",
    "Normalizer": "normalize",
    "DeviceLoader": "device",
    "Distribution": "distribution",
}
_SUBMODULES = {"nodes", "distributed", "datapipes", "sources", "engine", "report", "cli"}

__all__ = [
    "__version__",
    "Stats",
    "StatsAccumulator",
    "compute_stats",
    "StreamnormError",
    "StatsFileError",
    "LayoutError",
    "DTypeError",
    "NonFiniteError",
    "IncompatibleStatsError",
    "SplitNameError",
    "MaskError",
    "StatsStore",
    "save_stats",
    "load_stats",
    "Normalizer",
    "DeviceLoader",
    "Distribution",
    "nodes",
    "distributed",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'streamnorm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
