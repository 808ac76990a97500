"""TIFF decoding through tifffile: 8- and 16-bit, any channel count, every page.

Pillow reads TIFFs of 8-bit samples and 16-bit gray ones exactly, but keeps
only the high byte of 16-bit colour and stops at the first page. tifffile
(the optional extra ``tiff``) reads the stored samples as they are: each page
of a file becomes one ``(H, W, C)`` image (a stack of ``n`` pages is ``n``
samples), uint8 or uint16, and 16-bit stays exact. Pages Pillow converts
better (palette, CMYK, YCbCr, bilevel and white-is-zero images) go to Pillow
when they are single 8-bit pages; reduced-resolution pages (pyramids,
thumbnails) and masks are not samples and are left out.

Without tifffile, Pillow reads what it reads exactly, and the files it cannot
(16-bit colour, several pages, more than four channels) are refused with an
error that names the extra.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from .base import BadRecordError, one_line

TIFF_SUFFIXES = (".tif", ".tiff")
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
#: What to install when tifffile is missing.
TIFF_EXTRA = "pip install 'streamnorm[tiff]'"
_MINISBLACK, _RGB = 1, 2
#: What tifffile raises for damaged files or codecs it lacks.
_ERRORS = (ValueError, OSError, EOFError, KeyError, IndexError, NotImplementedError, MemoryError)
_AXES = {"YX": lambda a: a[:, :, None], "YXS": lambda a: a, "SYX": lambda a: np.moveaxis(a, 0, -1)}


def is_tiff(data: bytes) -> bool:
    """Whether ``data`` starts like a TIFF (or BigTIFF) file.

    Examples
    --------
    >>> is_tiff(b"II*\\x00...."), is_tiff(b"\\x89PNG")
    (True, False)
    """
    return bytes(data[:4]) in TIFF_MAGIC


def tifffile_module() -> Any | None:
    """The ``tifffile`` module, or ``None`` when the extra is not installed."""
    try:
        import tifffile
    except ImportError:
        return None
    return tifffile


def missing_extra(what: str) -> str:
    """The end of a message for a TIFF that needs tifffile: ``"... needs tifffile: pip ..."``."""
    return f"{what} needs tifffile, which is not installed: {TIFF_EXTRA}"


def decode_tiff(data: bytes, mode: str, where: str) -> list[np.ndarray] | None:
    """Every page of a TIFF as an ``(H, W, C)`` uint8 or uint16 image, through tifffile.

    Channels follow ``mode`` as for other images (``"RGB"``, ``"L"``, or
    ``"all"`` to keep every stored channel). Returns ``None`` when tifffile is
    missing, or for a single 8-bit page that Pillow converts exactly (palette,
    CMYK, YCbCr, bilevel, white-is-zero): the caller decodes those with Pillow.

    Raises
    ------
    BadRecordError
        Damaged files, samples that are not 8- or 16-bit unsigned integers
        (floats, 32-bit, signed), pages of other shapes, and more than four
        channels unless ``mode="all"``.
    """
    tifffile = tifffile_module()
    if tifffile is None:
        return None
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            tif.pages.useframes = False
            pages = [p for p in tif.pages if not (p.is_reduced or p.is_mask)]
            if not pages:
                raise BadRecordError(where, "TIFF file with no full-resolution page")
            if len(pages) == 1 and _pillow_converts(pages[0]):
                return None
            try:
                return [_page(page, mode, _page_where(where, k, len(pages)))
                        for k, page in enumerate(pages)]
            except BadRecordError:
                raise  # an OSError too, but a verdict on the page, not a codec failure
            except _ERRORS:
                # e.g. LZW or JPEG without imagecodecs: Pillow reads such a page
                # exactly (or refuses it), as it always did.
                if len(pages) == 1 and _pillow_exact(pages[0]):
                    return None
                raise
    except BadRecordError:
        raise
    except _ERRORS as exc:
        raise BadRecordError(where, f"TIFF: {one_line(exc)}") from exc


def _page_where(where: str, k: int, n: int) -> str:
    return where if n == 1 else f"{where} page {k}"


def _pillow_exact(page: Any) -> bool:
    """A page whose samples Pillow keeps exactly: 8-bit ones, or 16-bit gray."""
    return page.bitspersample == 8 or (page.bitspersample == 16 and page.samplesperpixel == 1)


def _pillow_converts(page: Any) -> bool:
    """An 8-bit page Pillow converts as this library always did (other colour spaces)."""
    return int(page.photometric) not in (_MINISBLACK, _RGB) and page.bitspersample == 8


def _page(page: Any, mode: str, where: str) -> np.ndarray:
    from ._decode import _max_pixels, convert_channels

    dtype = np.dtype(page.dtype) if page.dtype is not None else None
    if dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)) or page.bitspersample not in (8, 16):
        raise BadRecordError(
            where, f"TIFF with {page.bitspersample}-bit {dtype} samples; only 8- and 16-bit "
                   f"unsigned samples are read exactly, so store these images as .npy instead")
    if int(page.photometric) not in (_MINISBLACK, _RGB):
        raise BadRecordError(
            where, f"{8 * dtype.itemsize}-bit TIFF with photometric "
                   f"{getattr(page.photometric, 'name', page.photometric)}: only gray and RGB "
                   f"pages of 16-bit samples (or several pages) are read; convert it to RGB")
    limit = _max_pixels()
    if limit is not None and int(page.imagewidth) * int(page.imagelength) > limit:
        raise BadRecordError(where, f"TIFF page of {page.imagewidth}x{page.imagelength} pixels is "
                                    f"over Pillow's decompression-bomb limit ({limit} pixels)")
    shape = _AXES.get(page.axes)
    if shape is None:
        raise BadRecordError(where, f"TIFF page with axes {page.axes!r} {page.shape}; only "
                                    f"2-D pages (with or without channels) are read")
    image = np.ascontiguousarray(shape(page.asarray())).astype(dtype.newbyteorder("="),
                                                               copy=False)
    return convert_channels(image, mode, where)
