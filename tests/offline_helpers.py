"""Data generators shared by the offline tests (sources, engine, CLI)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SRC = str(Path(__file__).resolve().parents[1] / "src")


def png_bytes(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    from PIL import Image

    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def write_images(root: Path, n: int, rng: np.random.Generator, size: int = 8,
                 classes: tuple[str, ...] = ("a", "b"), shift: int = 0) -> list[Path]:
    """ImageFolder-style RGB PNGs; returns the paths written."""
    paths = []
    for k in range(n):
        folder = root / classes[k % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        arr = np.clip(rng.integers(0, 200, (size, size, 3)) + shift, 0, 255).astype(np.uint8)
        path = folder / f"{k:04d}.png"
        path.write_bytes(png_bytes(arr))
        paths.append(path)
    return paths


def decoded_rgb(path: Path) -> np.ndarray:
    """Oracle decode: Pillow's own conversion to 8-bit RGB."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def write_table(path: Path, rng: np.random.Generator, rows: int = 1000,
                row_group_size: int = 100, null_rate: float = 0.0) -> dict[str, np.ndarray]:
    """A Parquet file with int32, uint8, float32 and float64 columns (and a string one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {
        "i32": rng.integers(-10**6, 10**6, rows).astype(np.int32),
        "u8": rng.integers(0, 256, rows).astype(np.uint8),
        "f32": (rng.standard_normal(rows) * 3 + 100).astype(np.float32),
        "f64": rng.standard_normal(rows) * 1e-3 + 5.0,
    }
    arrays = {}
    for name, values in cols.items():
        mask = rng.random(rows) < null_rate if null_rate else None
        arrays[name] = pa.array(values, mask=mask)
    arrays["name"] = pa.array([f"r{i}" for i in range(rows)])
    pq.write_table(pa.table(arrays), path, row_group_size=row_group_size)
    return cols


def run_cli(*args: str, cwd: str | None = None, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m streamnorm ARGS`` in a subprocess using this checkout's sources."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = SRC + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "streamnorm", *args], check=False, capture_output=True, text=True,
        timeout=timeout, cwd=cwd, env=full_env,
    )
