"""Image decoding shared by image files and Parquet image columns.

Images are decoded to ``(H, W, C)`` arrays, uint8 or uint16 for 16-bit images,
sample for sample: 16-bit PNGs by :mod:`streamnorm._png` (exact for every
colour type), everything else by Pillow. :func:`reduce_images` reduces a run
of decoded images to one partial, stacking images of one size so that the
kernels are called once per stack instead of once per image.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import StreamnormError
from ..stats import Stats
from .base import BadRecordError, ShardResult, Source, SourceError, one_line

IMAGE_FORMATS = "PNG, JPEG, BMP, GIF, WebP, TIFF"
IMAGE_MODES = ("RGB", "L")
#: Decoded images of one size are stacked up to this many bytes per kernel call.
IMAGE_STACK_BYTES = 8 * 2**20


def mixed_bit_depths(where_a: str, dtype_a: Any, where_b: str, dtype_b: Any) -> SourceError:
    """The error for a source whose images differ in bit depth.

    8-bit and 16-bit samples are on different scales (white is 255 in one and
    65535 in the other), so pooling them would give statistics of neither.
    """
    def bits(dtype: Any) -> str:
        return f"{8 * np.dtype(dtype).itemsize}-bit"

    return SourceError(
        f"the images mix bit depths: {where_a} is {bits(dtype_a)}, {where_b} is "
        f"{bits(dtype_b)}; their values are on different scales, so convert them to one bit "
        f"depth or compute them as separate splits"
    )



_PIL_EIGHT_BIT = frozenset({"1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "La",
                            "RGBa", "RGBX", "LAB", "HSV"})
#: Pillow's 16-bit gray modes: the samples come back exactly (numpy dtype from the mode).
_PIL_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
#: Formats Pillow decodes for us; a file of another format is a bad record.
_PIL_FORMATS = frozenset({"PNG", "JPEG", "MPO", "BMP", "GIF", "WEBP", "TIFF"})


def _max_pixels() -> int | None:
    """Pillow's decompression-bomb limit (it raises beyond twice its warning size)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def _luma16(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma in integers, exactly as Pillow's ``convert("L")`` computes it."""
    x = rgb.astype(np.int64)
    y = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16
    return y.astype(rgb.dtype)[..., None]


def _channels(image: np.ndarray, mode: str) -> np.ndarray:
    """``(H, W, C)`` samples of any channel count -> ``mode`` ("RGB" or "L"), exactly."""
    c = image.shape[2]
    if mode == "RGB":
        if c <= 2:  # gray (+ alpha): gray repeated, alpha dropped
            return np.repeat(image[:, :, :1], 3, axis=2)
        return np.ascontiguousarray(image[:, :, :3])
    if c <= 2:
        return np.ascontiguousarray(image[:, :, :1])
    return _luma16(image[:, :, :3])


def _decode_png16(data: bytes, mode: str, where: str) -> np.ndarray:
    from .._png import PngError, decode_png16

    try:
        image = decode_png16(data, max_pixels=_max_pixels())
    except PngError as exc:
        raise BadRecordError(where, f"16-bit PNG: {exc}") from None
    return _channels(image, mode)


def _tiff_bits(im: Any) -> int:
    bits = im.tag_v2.get(258, (8,))
    return max(bits) if isinstance(bits, tuple) else int(bits)


def decode_image(data: bytes, mode: str = "RGB", where: str = "<bytes>") -> np.ndarray:
    """Decode image bytes into an ``(H, W, C)`` array: uint8, or uint16 for 16-bit images.

    PNG, JPEG, BMP, GIF, WebP and TIFF are read (Pillow; 16-bit PNGs by
    :mod:`streamnorm._png`, which keeps every sample exactly: Pillow would
    keep only the high byte of 16-bit colour images). ``mode="RGB"`` gives 3
    channels (gray repeated, alpha dropped, palette and CMYK converted);
    ``mode="L"`` gives 1 channel (ITU-R 601-2 luma for colour images, in
    integers, as Pillow computes it). 16-bit images (gray, gray+alpha, RGB,
    RGBA PNGs; 16-bit gray TIFFs) stay uint16. 32-bit, floating-point and
    16-bit colour TIFF images, and files with several frames (animations,
    multi-page TIFFs), raise :class:`BadRecordError` instead of being
    reduced or cut silently.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("LA", (4, 2), (7, 99)).save(buf, "PNG")
    >>> img = decode_image(buf.getvalue())
    >>> img.shape, img.dtype, img[0, 0].tolist()
    ((2, 4, 3), dtype('uint8'), [7, 7, 7])
    >>> buf = io.BytesIO(); Image.new("I;16", (3, 1), 40000).save(buf, "PNG")
    >>> img = decode_image(buf.getvalue())
    >>> img.dtype, img[0, 0].tolist()
    (dtype('uint16'), [40000, 40000, 40000])
    """
    from PIL import Image, UnidentifiedImageError

    from .._png import png_info

    check_image_mode(mode)
    info = png_info(data)
    if info is not None and info.bit_depth == 16:
        return _decode_png16(data, mode, where)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in _PIL_FORMATS:
                raise BadRecordError(where, f"{im.format} is not one of the image formats read "
                                            f"(PNG, JPEG, BMP, GIF, WebP, TIFF)")
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and im.format != "MPO":  # MPO: a JPEG's extra views; the first is it
                raise BadRecordError(where, f"{im.format} file with {frames} frames; only "
                                            f"single-frame images are read (split the frames)")
            if im.format == "TIFF" and _tiff_bits(im) > 8 and im.mode not in _PIL_SIXTEEN_BIT:
                raise BadRecordError(
                    where, f"{_tiff_bits(im)}-bit TIFF in Pillow mode {im.mode!r}, which Pillow "
                           f"cannot read exactly; store it as 16-bit PNG or .npy instead")
            if im.mode in _PIL_SIXTEEN_BIT:
                im.load()
                gray = np.asarray(im).astype(np.uint16)  # native byte order
                return _channels(gray[:, :, None], mode)
            if im.mode not in _PIL_EIGHT_BIT:
                raise BadRecordError(
                    where,
                    f"Pillow mode {im.mode!r} (32-bit or floating-point samples) would be "
                    f"clipped to 8 bits, so store these images as .npy instead",
                )
            im.load()
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            array = np.asarray(im if im.mode == mode else im.convert(mode), dtype=np.uint8)
    except BadRecordError:
        raise
    except UnidentifiedImageError:
        raise BadRecordError(where, f"not an image file that can be read ({IMAGE_FORMATS})") from None
    except (OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError) as exc:
        raise BadRecordError(where, one_line(exc)) from exc
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def check_image_mode(mode: str) -> None:
    """Refuse an unknown ``image_mode``."""
    if mode not in IMAGE_MODES:
        raise StreamnormError(f"image_mode must be one of {IMAGE_MODES}, got {mode!r}")


def reduce_images(images: Iterable[tuple[str, np.ndarray]], histogram: bool, nan_policy: str,
                  feature_names: tuple[str, ...] | None = None) -> tuple[tuple[Stats, ...], int]:
    """Statistics (layout ``NHWC``) of ``(where, image)`` pairs and the number of images.

    All images must share one dtype (bit depth): see :func:`mixed_bit_depths`.
    """
    from ..accumulate import StatsAccumulator

    acc = StatsAccumulator(layout="NHWC", feature_names=feature_names,
                           histogram=histogram, nan_policy=nan_policy)
    n = 0
    pending: list[np.ndarray] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending_bytes
        if pending:
            acc.update(pending[0][None] if len(pending) == 1 else np.stack(pending))
            pending.clear()
            pending_bytes = 0

    first: tuple[str, np.dtype] | None = None
    # Images of one size are reduced a stack at a time: one kernel call per
    # stack instead of per image (the per-call cost dominates small images).
    for where, image in images:
        if first is None:
            first = (where, image.dtype)
        elif image.dtype != first[1]:
            raise mixed_bit_depths(first[0], first[1], where, image.dtype)
        if pending and image.shape != pending[0].shape:
            flush()
        pending.append(image)
        pending_bytes += image.nbytes
        n += 1
        if pending_bytes >= IMAGE_STACK_BYTES:
            flush()
    flush()
    return ((acc.result(),) if n else ()), n


def check_one_bit_depth(source: Source, results: Mapping[str, ShardResult]) -> None:
    """Refuse image shards of different bit depths (each shard checks its own images)."""
    seen: dict[str, str] = {}
    for shard in sorted(source.shards, key=lambda s: s.id):
        for part in results[shard.id].parts:
            seen.setdefault(part.dtype, shard.where)
    if len(seen) > 1:
        (dtype_a, where_a), (dtype_b, where_b) = list(seen.items())[:2]
        raise mixed_bit_depths(where_a, dtype_a, where_b, dtype_b)
