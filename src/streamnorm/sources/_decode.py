"""Image decoding shared by image files and Parquet image columns.

Images are decoded to ``(H, W, C)`` arrays, uint8 or uint16 for 16-bit images,
sample for sample: 16-bit PNGs by :mod:`streamnorm._png` (exact for every
colour type), JPEGs by simplejpeg when it is installed and gives Pillow's
pixels (:mod:`streamnorm.sources._jpeg`), everything else by Pillow.
:func:`reduce_images` reduces a run of decoded images to one partial,
stacking images of one size so that the kernels are called once per stack
instead of once per image.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import StreamnormError
from ..stats import Stats
from . import tiff
from ._jpeg import decode_jpeg
from .base import BadRecordError, ShardResult, Source, SourceError, one_line

IMAGE_FORMATS = "PNG, JPEG, BMP, GIF, WebP, TIFF"
IMAGE_MODES = ("RGB", "L", "all")
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
    """``(H, W, C)`` samples of 1 to 4 channels -> ``mode`` ("RGB" or "L"), exactly."""
    c = image.shape[2]
    if mode == "RGB":
        if c <= 2:  # gray (+ alpha): gray repeated, alpha dropped
            return np.repeat(image[:, :, :1], 3, axis=2)
        return np.ascontiguousarray(image[:, :, :3])
    if c <= 2:
        return np.ascontiguousarray(image[:, :, :1])
    return _luma16(image[:, :, :3])


def convert_channels(image: np.ndarray, mode: str, where: str) -> np.ndarray:
    """``(H, W, C)`` samples -> ``mode``: "RGB", "L", or "all" (every channel as stored).

    More than four channels (multispectral images) have no RGB or luma; they
    are kept only under ``"all"``, never cut to three silently.
    """
    c = image.shape[2]
    if mode == "all":
        return np.ascontiguousarray(image)
    if c > 4:
        raise BadRecordError(
            where, f"{c} channels; image_mode={mode!r} reads gray, gray+alpha, RGB and RGBA "
                   f"images, so pass image_mode='all' to keep every channel")
    return _channels(image, mode)


def _decode_png16(data: bytes, mode: str, where: str) -> np.ndarray:
    from .._png import PngError, decode_png16

    try:
        image = decode_png16(data, max_pixels=_max_pixels())
    except PngError as exc:
        raise BadRecordError(where, f"16-bit PNG: {exc}") from None
    return convert_channels(image, mode, where)


def _tiff_bits(im: Any) -> int:
    bits = im.tag_v2.get(258, (8,))
    return max(bits) if isinstance(bits, tuple) else int(bits)


def _tiff_hint(im: Any) -> str:
    """What to do about a TIFF that Pillow cannot read exactly."""
    if im.format == "TIFF" and tiff.tifffile_module() is None:
        return "; " + tiff.missing_extra("reading it exactly")
    return ""


def decode_frames(data: bytes, mode: str = "RGB", where: str = "<bytes>") -> list[np.ndarray]:
    """Decode image bytes into ``(H, W, C)`` arrays: one per page of a TIFF stack, else one.

    TIFFs go through tifffile when it is installed (:mod:`streamnorm.sources.tiff`:
    16-bit colour exact, every page, any channel count); everything else as
    :func:`decode_image` says.

    Examples
    --------
    >>> import io, numpy as np, tifffile
    >>> buf = io.BytesIO()
    >>> tifffile.imwrite(buf, np.full((2, 3, 4, 3), 40000, np.uint16), photometric="rgb")
    >>> [(f.shape, f.dtype.name) for f in decode_frames(buf.getvalue())]
    [((3, 4, 3), 'uint16'), ((3, 4, 3), 'uint16')]
    """
    check_image_mode(mode)
    if tiff.is_tiff(data):
        frames = tiff.decode_tiff(data, mode, where)
        if frames is not None:
            return frames
    return [_decode_single(data, mode, where)]


def decode_records(data: bytes, mode: str, where: str) -> list[tuple[str, np.ndarray]]:
    """``(where, image)`` for each image of a file: ``"<where> page <k>"`` in a TIFF stack."""
    frames = decode_frames(data, mode, where)
    if len(frames) == 1:
        return [(where, frames[0])]
    return [(f"{where} page {k}", frame) for k, frame in enumerate(frames)]


def decode_image(data: bytes, mode: str = "RGB", where: str = "<bytes>") -> np.ndarray:
    """Decode image bytes into an ``(H, W, C)`` array: uint8, or uint16 for 16-bit images.

    PNG, JPEG, BMP, GIF, WebP and TIFF are read (Pillow; 16-bit PNGs by
    :mod:`streamnorm._png`, which keeps every sample exactly: Pillow would
    keep only the high byte of 16-bit colour images; TIFFs by tifffile when
    the extra ``tiff`` is installed, see :mod:`streamnorm.sources.tiff`).
    ``mode="RGB"`` gives 3 channels (gray repeated, alpha dropped, palette
    and CMYK converted); ``mode="L"`` gives 1 channel (ITU-R 601-2 luma for
    colour images, in integers, as Pillow computes it); ``mode="all"`` keeps
    the channels as stored. 16-bit images (PNGs of every colour type; gray
    TIFFs, and colour ones through tifffile) stay uint16. 32-bit and
    floating-point images, and files with several frames (animations,
    multi-page TIFFs: see :func:`decode_frames`), raise
    :class:`BadRecordError` instead of being reduced or cut silently.

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
    frames = decode_frames(data, mode, where)
    if len(frames) > 1:
        raise BadRecordError(where, f"TIFF file with {len(frames)} pages; decode_frames reads "
                                    f"each page as an image")
    return frames[0]


def _decode_single(data: bytes, mode: str, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from .._png import png_info

    info = png_info(data)
    if info is not None and info.bit_depth == 16:
        return _decode_png16(data, mode, where)
    fast = decode_jpeg(data, _max_pixels())
    if fast is not None:
        return convert_channels(fast, mode, where)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in _PIL_FORMATS:
                raise BadRecordError(where, f"{im.format} is not one of the image formats read "
                                            f"(PNG, JPEG, BMP, GIF, WebP, TIFF)")
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and im.format != "MPO":  # MPO: a JPEG's extra views; the first is it
                raise BadRecordError(where, f"{im.format} file with {frames} frames; only "
                                            f"single-frame images are read (split the frames)"
                                            + _tiff_hint(im))
            if im.format == "TIFF" and _tiff_bits(im) > 8 and im.mode not in _PIL_SIXTEEN_BIT:
                raise BadRecordError(
                    where, f"{_tiff_bits(im)}-bit TIFF in Pillow mode {im.mode!r}, which Pillow "
                           f"cannot read exactly; store it as 16-bit PNG or .npy instead"
                           + _tiff_hint(im))
            if im.mode in _PIL_SIXTEEN_BIT:
                im.load()
                gray = np.asarray(im).astype(np.uint16)  # native byte order
                return convert_channels(gray[:, :, None], mode, where)
            if im.mode not in _PIL_EIGHT_BIT:
                raise BadRecordError(
                    where,
                    f"Pillow mode {im.mode!r} (32-bit or floating-point samples) would be "
                    f"clipped to 8 bits, so store these images as .npy instead",
                )
            im.load()
            array = _pillow_array(im, mode)
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


#: Pillow modes whose channels are kept as they are under image_mode "all".
_PIL_STORED = frozenset({"L", "LA", "RGB", "RGBA"})


def _pillow_array(im: Any, mode: str) -> np.ndarray:
    """An 8-bit Pillow image in ``mode`` ("all": its own channels, palettes expanded)."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if mode == "all":
        target = im.mode if im.mode in _PIL_STORED else "RGBA" if im.mode == "RGBa" else \
            "L" if im.mode == "1" else "RGB"
    else:
        target = mode
    return np.asarray(im if im.mode == target else im.convert(target), dtype=np.uint8)


def check_image_mode(mode: str) -> None:
    """Refuse an unknown ``image_mode``."""
    if mode not in IMAGE_MODES:
        raise StreamnormError(f"image_mode must be one of {IMAGE_MODES}, got {mode!r}")


def reduce_images(images: Iterable[tuple[str, np.ndarray]], histogram: bool, nan_policy: str,
                  feature_names: tuple[str, ...] | None = None,
                  ignore_value: float | int | None = None) -> tuple[tuple[Stats, ...], int]:
    """Statistics (layout ``NHWC``) of ``(where, image)`` pairs and the number of images.

    All images must share one dtype (bit depth): see :func:`mixed_bit_depths`.
    """
    from ..accumulate import StatsAccumulator

    acc = StatsAccumulator(layout="NHWC", feature_names=feature_names,
                           histogram=histogram, nan_policy=nan_policy, ignore_value=ignore_value)
    n = 0
    stack = _Stack(acc)
    first: tuple[str, np.ndarray] | None = None
    for where, image in images:
        if first is None:
            first = (where, image)
        elif image.dtype != first[1].dtype:
            raise mixed_bit_depths(first[0], first[1].dtype, where, image.dtype)
        elif image.shape[2] != first[1].shape[2]:
            raise mixed_channels(first[0], first[1].shape[2], where, image.shape[2])
        stack.add(image)
        n += 1
    stack.flush()
    return ((acc.result(),) if n else ()), n


class _Stack:
    """Images of one size, copied into one reused buffer and reduced a stack at a time.

    One kernel call per stack instead of per image (the per-call cost
    dominates small images). Each image is copied as soon as it is decoded,
    while it is still in the CPU cache, into a buffer that is allocated once:
    stacking a list of images afterwards would read them back from memory
    and fault in the pages of a new buffer for every stack.
    """

    def __init__(self, acc: Any) -> None:
        self.acc = acc
        self.buffer: np.ndarray | None = None
        self.size = 0

    def add(self, image: np.ndarray) -> None:
        """Copy ``image`` into the stack; reduce the stack when full or when the size changes."""
        buffer = self.buffer
        fits = buffer is not None and buffer.shape[1:] == image.shape and buffer.dtype == image.dtype
        if self.size and not fits:
            self.flush()
        if buffer is None or not fits:
            rows = IMAGE_STACK_BYTES // max(1, image.nbytes)
            if rows <= 1:  # a large image is a stack by itself: no copy
                self.acc.update(image[None])
                return
            buffer = self.buffer = np.empty((rows, *image.shape), image.dtype)
        buffer[self.size] = image
        self.size += 1
        if self.size == buffer.shape[0]:
            self.flush()

    def flush(self) -> None:
        """Reduce the images in the stack, if any."""
        if self.size and self.buffer is not None:
            self.acc.update(self.buffer[:self.size])
        self.size = 0


def mixed_channels(where_a: str, c_a: int, where_b: str, c_b: int) -> SourceError:
    """The error for images of different channel counts (possible under image_mode "all")."""
    return SourceError(
        f"the images differ in channel count: {where_a} has {c_a}, {where_b} has {c_b}; "
        f"per-channel statistics need one count, so pass image_mode='RGB' or 'L', or compute "
        f"them as separate splits"
    )


def check_one_bit_depth(source: Source, results: Mapping[str, ShardResult]) -> None:
    """Refuse image shards of different bit depths or channel counts (each shard checks its own)."""
    seen: dict[str, str] = {}
    channels: dict[int, str] = {}
    for shard in sorted(source.shards, key=lambda s: s.id):
        for part in results[shard.id].parts:
            seen.setdefault(part.dtype, shard.where)
            channels.setdefault(part.n_features, shard.where)
    if len(seen) > 1:
        (dtype_a, where_a), (dtype_b, where_b) = list(seen.items())[:2]
        raise mixed_bit_depths(where_a, dtype_a, where_b, dtype_b)
    if len(channels) > 1:
        (c_a, where_a), (c_b, where_b) = list(channels.items())[:2]
        raise mixed_channels(where_a, c_a, where_b, c_b)
