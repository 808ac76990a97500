"""An exact reader for 16-bit PNG images.

Pillow opens 16-bit gray+alpha, RGB and RGBA PNGs in 8-bit modes (it keeps
the high byte of each sample), so statistics computed from what it returns
would be silently wrong. This module decodes those files itself: chunks
(with their CRCs), zlib, the five PNG row filters (a small numba kernel, as
Average and Paeth depend on the pixel just decoded) and Adam7 interlacing,
into an ``(H, W, C)`` uint16 array holding exactly the stored samples.

Only 16-bit images are read here; every other PNG goes through Pillow.

Examples
--------
>>> import io, numpy as np
>>> from PIL import Image
>>> buf = io.BytesIO()
>>> Image.fromarray(np.array([[0, 65535], [258, 7]], np.uint16)).save(buf, "PNG")
>>> png_info(buf.getvalue()).bit_depth
16
>>> decode_png16(buf.getvalue())[..., 0].tolist()
[[0, 65535], [258, 7]]
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import numpy as np

from ._kernels import _jit

__all__ = ["PNG_SIGNATURE", "PngError", "PngInfo", "decode_png16", "png_info"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Samples per pixel of each 16-bit colour type: gray, RGB, gray+alpha, RGBA.
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
#: Adam7 passes: (first column, first row, column step, row step).
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))
_KNOWN_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}


class PngError(ValueError):
    """A PNG file that is malformed, truncated or not one this reader handles."""


class PngInfo(NamedTuple):
    """The IHDR fields of a PNG file."""

    width: int
    height: int
    bit_depth: int
    color_type: int
    interlace: int


def png_info(data: bytes) -> PngInfo | None:
    """IHDR of PNG bytes, or ``None`` when ``data`` is not a PNG file."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return PngInfo(width, height, depth, ctype, interlace)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """``(type, data)`` of every chunk up to IEND, CRCs checked."""
    out = []
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise PngError("truncated file (no IEND chunk)")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise PngError(f"truncated {ctype.decode('latin-1')} chunk")
        body = data[pos + 8:end]
        (crc,) = struct.unpack(">I", data[end:end + 4])
        if zlib.crc32(ctype + body) != crc:
            raise PngError(f"CRC mismatch in the {ctype.decode('latin-1')} chunk (corrupt file)")
        out.append((ctype, body))
        pos = end + 4
        if ctype == b"IEND":
            return out


@_jit
def _unfilter(src, start, rows, stride, bpp, out):
    """Undo the PNG row filters of ``rows`` rows of ``src[start:]`` into ``out``.

    Returns -1, or the index of the first row whose filter type is unknown.
    """
    for y in range(rows):
        base = start + y * (stride + 1)
        kind = src[base]
        if kind > 4:
            return y
        for x in range(stride):
            a = np.int32(out[y, x - bpp]) if x >= bpp else np.int32(0)
            b = np.int32(out[y - 1, x]) if y > 0 else np.int32(0)
            value = np.int32(src[base + 1 + x])
            if kind == 1:
                value += a
            elif kind == 2:
                value += b
            elif kind == 3:
                value += (a + b) >> 1
            elif kind == 4:
                c = np.int32(out[y - 1, x - bpp]) if (x >= bpp and y > 0) else np.int32(0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                if pa <= pb and pa <= pc:
                    value += a
                elif pb <= pc:
                    value += b
                else:
                    value += c
            out[y, x] = np.uint8(value & 255)
    return -1


def _passes(info: PngInfo) -> list[tuple[int, int, int, int, int, int]]:
    """``(x0, y0, dx, dy, width, height)`` of each non-empty (sub-)image."""
    if info.interlace == 0:
        return [(0, 0, 1, 1, info.width, info.height)]
    out = []
    for x0, y0, dx, dy in ADAM7:
        w = max(0, (info.width - x0 + dx - 1) // dx)
        h = max(0, (info.height - y0 + dy - 1) // dy)
        if w and h:
            out.append((x0, y0, dx, dy, w, h))
    return out


def decode_png16(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode a 16-bit PNG into an ``(H, W, C)`` uint16 array, sample for sample.

    ``C`` is 1 (gray), 2 (gray, alpha), 3 (RGB) or 4 (RGBA). Interlaced
    (Adam7) files are read too.

    Parameters
    ----------
    data : bytes
        The whole file.
    max_pixels : int, optional
        Refuse images with more pixels (decompression bombs).

    Raises
    ------
    PngError
        For files that are not 16-bit PNGs, or are malformed or truncated.
    """
    info = png_info(data)
    if info is None:
        raise PngError("not a PNG file")
    if info.bit_depth != 16 or info.color_type not in CHANNELS:
        raise PngError(f"not a 16-bit gray/RGB PNG (bit depth {info.bit_depth}, "
                       f"colour type {info.color_type})")
    if info.width == 0 or info.height == 0:
        raise PngError(f"invalid image size {info.width}x{info.height}")
    if info.interlace not in (0, 1):
        raise PngError(f"unknown interlace method {info.interlace}")
    if data[26] != 0 or data[27] != 0:
        raise PngError("unknown compression or filter method")
    if max_pixels is not None and info.width * info.height > max_pixels:
        raise PngError(f"image size {info.width}x{info.height} exceeds the limit of "
                       f"{max_pixels} pixels (a decompression bomb?)")
    chunks = _chunks(data)
    for ctype, _body in chunks:
        if ctype[0] & 0x20 == 0 and ctype not in _KNOWN_CRITICAL:
            raise PngError(f"unknown critical chunk {ctype.decode('latin-1')}")
    idat = b"".join(body for ctype, body in chunks if ctype == b"IDAT")
    if not idat:
        raise PngError("no image data (IDAT chunk)")
    channels = CHANNELS[info.color_type]
    bpp = 2 * channels
    passes = _passes(info)
    expected = sum(h * (1 + w * bpp) for *_, w, h in passes)
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(idat, expected)
    except zlib.error as exc:
        raise PngError(f"corrupt image data ({exc})") from None
    if len(raw) < expected:
        raise PngError(f"truncated image data ({len(raw)} of {expected} bytes)")
    src = np.frombuffer(raw, dtype=np.uint8)
    image = np.empty((info.height, info.width, channels), dtype=np.uint16)
    start = 0
    for x0, y0, dx, dy, w, h in passes:
        rows = np.empty((h, w * bpp), dtype=np.uint8)
        bad = _unfilter(src, start, h, w * bpp, bpp, rows)
        if bad >= 0:
            raise PngError(f"unknown filter type {src[start + bad * (w * bpp + 1)]} in row {bad}")
        start += h * (1 + w * bpp)
        image[y0::dy, x0::dx] = rows.view(">u2").reshape(h, w, channels)
    return image
