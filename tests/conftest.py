"""Shared fixtures and oracles for the test suite."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

NIST_DIR = Path(__file__).resolve().parent / "data" / "nist-strd"

INT_DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32]


def random_ints(rng: np.random.Generator, dtype, shape) -> np.ndarray:
    """Integers over the dtype's whole range, extremes included."""
    if dtype is np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=np.int64).astype(dtype)
    flat = x.reshape(-1)
    if flat.size >= 2:
        flat[0], flat[-1] = info.min, info.max
    return x


def feature_matrix(x: np.ndarray, layout: str) -> np.ndarray:
    """(features, values) copy of a batch: the oracle's view of a layout."""
    axis = next((i for i, c in enumerate(layout) if c in "CF"), None)
    if axis is None:
        return x.reshape(1, -1)
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def exact_oracle(x: np.ndarray, layout: str) -> dict[str, list]:
    """Exact mean and M2 per feature with fractions, rounded once."""
    rows = feature_matrix(x, layout).astype(np.int64)
    out: dict[str, list] = {"mean": [], "m2": [], "sum": [], "sumsq": []}
    for row in rows:
        vals = [int(v) for v in row]
        n = len(vals)
        total = sum(vals)
        mean = Fraction(total, n)
        m2 = sum((Fraction(v) - mean) ** 2 for v in vals)
        out["mean"].append(float(mean))
        out["m2"].append(float(m2))
        out["sum"].append(total)
        out["sumsq"].append(sum(v * v for v in vals))
    return out


def load_nist(name: str) -> tuple[np.ndarray, float, float]:
    """Data, certified mean and certified sample std (n-1) of a NIST StRD file."""
    lines = (NIST_DIR / f"{name}.dat").read_text().splitlines()
    if lines[0].startswith("#"):
        cert = {}
        for line in lines:
            if "=" in line and not line.startswith("#"):
                key, value = (s.strip() for s in line.split("=", 1))
                cert[key] = value
        data_lines = [ln for ln in lines if ln.strip() and not ln.startswith("#") and "=" not in ln]
        mean, std = float(cert["mean"]), float(cert["standardDeviation"])
    else:
        mean = std = None
        for line in lines[:60]:
            if "ybar:" in line:
                mean = float(line.split("ybar:")[1])
            if " s:" in line:
                std = float(line.split(" s:")[1])
        data_lines = [ln for ln in lines[60:] if ln.strip()]
    data = np.array([float(v) for ln in data_lines for v in ln.split()], dtype=np.float64)
    return data, mean, std


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
