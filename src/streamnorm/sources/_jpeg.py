"""JPEG decoding by simplejpeg (extra ``jpeg``) where its pixels are Pillow's, and the decoder's name.

A JPEG decoder's output is not fixed by the standard (IDCT, chroma
upsampling), so exact statistics and quantiles of JPEGs hold for one
decoder. simplejpeg and Pillow both decode with libjpeg-turbo's defaults
(accurate integer IDCT, fancy upsampling) and give the same pixels on every
test image (``benchmarks/bench_jpeg.py``; ``tests/test_jpeg_decoder.py``
checks it on photos); simplejpeg skips Pillow's per-image Python work and is
3x faster on 224x224 photos. It is used only for 8-bit JPEGs in YCbCr or
gray, the cases checked; CMYK, YCCK and Adobe RGB files, and anything
simplejpeg refuses or warns about, go to Pillow, which then decodes them or
names the problem.

Set the environment variable ``STREAMNORM_JPEG_DECODER=pillow`` to decode
every JPEG with Pillow. :func:`image_decoder` names the decoders in use; it
is stored with the statistics of image sources.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

#: Environment variable: ``pillow`` decodes every JPEG with Pillow.
DECODER_ENV = "STREAMNORM_JPEG_DECODER"
JPEG_MAGIC = b"\xff\xd8\xff"
#: simplejpeg's header colour spaces that it decodes as Pillow does, and the output asked for.
_COLORSPACES = {"YCbCr": "RGB", "Gray": "GRAY"}


def simplejpeg_module() -> ModuleType | None:
    """simplejpeg when it is installed and not turned off by :data:`DECODER_ENV`."""
    if os.environ.get(DECODER_ENV, "").strip().lower() == "pillow":
        return None
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def decode_jpeg(data: bytes, max_pixels: int | None) -> np.ndarray | None:
    """``(H, W, 3)`` RGB or ``(H, W, 1)`` gray uint8 pixels of a JPEG, or None: let Pillow decode it.

    None for data that is not a JPEG, colour spaces other than YCbCr and
    gray, images beyond Pillow's warning size (``max_pixels`` is twice it:
    Pillow warns or refuses), files that simplejpeg refuses or warns about,
    and when simplejpeg is not in use.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (4, 2), (200, 30, 60)).save(buf, "JPEG")
    >>> pixels = decode_jpeg(buf.getvalue(), None)
    >>> pixels is None or pixels.shape == (2, 4, 3)
    True
    """
    module = simplejpeg_module()
    if module is None or not data.startswith(JPEG_MAGIC):
        return None
    try:
        height, width, colorspace, _ = module.decode_jpeg_header(data)
        if colorspace not in _COLORSPACES:
            return None
        if max_pixels is not None and height * width > max_pixels // 2:
            return None
        return module.decode_jpeg(data, colorspace=_COLORSPACES[colorspace])
    except (ValueError, RuntimeError, OSError):
        return None  # Pillow decodes it after all, or says what is wrong


def _version(module: Any) -> str:
    return str(getattr(module, "__version__", "")) or "(version unknown)"


def image_decoder() -> str:
    """The decoders of 8-bit images here: ``"Pillow 11.1.0 (libjpeg-turbo 3.1.0)"``, simplejpeg first when used.

    Examples
    --------
    >>> image_decoder().split()[0] in ("Pillow", "simplejpeg")
    True
    """
    import PIL
    from PIL import features

    turbo = features.version("libjpeg_turbo")
    pillow = f"Pillow {_version(PIL)}" + (f" (libjpeg-turbo {turbo})" if turbo else "")
    module = simplejpeg_module()
    if module is None:
        return pillow
    return f"simplejpeg {_version(module)} (JPEG), {pillow}"
