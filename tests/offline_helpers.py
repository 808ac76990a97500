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


# -- an independent 16-bit PNG writer (numpy + zlib, all five filters, Adam7) ----------

_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))
_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type


def _filter_row(raw: np.ndarray, prior: np.ndarray, bpp: int, kind: int) -> np.ndarray:
    """Forward PNG filter ``kind`` of one row (int arrays), vectorised, mod 256."""
    left = np.concatenate([np.zeros(bpp, np.int64), raw[:-bpp]])
    upleft = np.concatenate([np.zeros(bpp, np.int64), prior[:-bpp]])
    if kind == 0:
        pred = np.zeros_like(raw)
    elif kind == 1:
        pred = left
    elif kind == 2:
        pred = prior
    elif kind == 3:
        pred = (left + prior) // 2
    else:
        p = left + prior - upleft
        pa, pb, pc = np.abs(p - left), np.abs(p - prior), np.abs(p - upleft)
        pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, upleft))
    return ((raw - pred) % 256).astype(np.uint8)


def _filtered(image: np.ndarray, filters: np.ndarray) -> bytes:
    h, w, c = image.shape
    bpp = 2 * c
    rows = image.astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(np.int64)
    out = bytearray()
    prior = np.zeros(w * bpp, np.int64)
    for y in range(h):
        kind = int(filters[y % len(filters)])
        out.append(kind)
        out += _filter_row(rows[y], prior, bpp, kind).tobytes()
        prior = rows[y]
    return bytes(out)


def png16_bytes(image: np.ndarray, filters=(0, 1, 2, 3, 4), interlace: bool = False,
                idat_pieces: int = 1) -> bytes:
    """A 16-bit PNG of ``image`` ((H, W, C) uint16, C in 1-4), written by hand.

    Row ``y`` (of each Adam7 pass when ``interlace``) uses filter
    ``filters[y % len(filters)]``; the zlib stream is cut into ``idat_pieces``
    IDAT chunks. Independent of streamnorm's reader and of Pillow.
    """
    import struct
    import zlib

    image = np.asarray(image, dtype=np.uint16)
    if image.ndim == 2:
        image = image[:, :, None]
    h, w, c = image.shape
    filters = np.asarray(filters)
    if interlace:
        stream = b"".join(_filtered(image[y0::dy, x0::dx], filters)
                          for x0, y0, dx, dy in _ADAM7
                          if image[y0::dy, x0::dx].size)
    else:
        stream = _filtered(image, filters)
    data = zlib.compress(stream, 6)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    step = max(1, -(-len(data) // idat_pieces))
    idats = b"".join(chunk(b"IDAT", data[i:i + step]) for i in range(0, len(data), step))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, _COLOR_TYPES[c], 0, 0, 1 if interlace else 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idats + chunk(b"IEND", b"")
