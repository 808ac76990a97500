"""Image files (PNG, JPEG, BMP, GIF, WebP, TIFF): runs of files per shard -> ``NHWC``.

A shard is a run of ``images_per_shard`` files (sorted by URL); each file is
decoded by :func:`~streamnorm.sources._decode.decode_image` to ``(H, W, C)``
uint8, or uint16 for 16-bit images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from ..errors import LayoutError, StreamnormError
from ._decode import IMAGE_FORMATS, check_one_bit_depth, decode_records, reduce_images
from .base import (
    BadRecordError,
    FileInfo,
    Format,
    OpenRequest,
    ReadOptions,
    Shard,
    ShardResult,
    Source,
    SourceError,
    display,
    fs_of,
    one_line,
    reject_table_options,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Image files of at least this many bytes on average are decoded on threads:
#: Pillow holds the GIL only for its per-file bookkeeping (tens of
#: microseconds), a small part of decoding a file this large.
THREAD_MIN_FILE_BYTES = 16 * 2**10


class ImageFormat(Format):
    """Image files, searched recursively in folders (ImageFolder-style class folders work)."""

    kind = "image"
    suffixes = IMAGE_SUFFIXES
    magic = (b"\x89PNG", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
    noun = f"image ({IMAGE_FORMATS})"
    folder_noun = f"image ({', '.join(IMAGE_SUFFIXES)})"
    plural = "image files"

    def sniff(self, head: bytes) -> bool:
        return super().sniff(head) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")

    def open(self, files: Sequence[FileInfo], request: OpenRequest) -> Source:
        reject_table_options(self.kind, files, request)
        if request.layout not in (None, "NHWC"):
            raise LayoutError(f"images are read as 'NHWC'; drop --layout {request.layout!r}")
        options = ReadOptions(layout="NHWC", image_mode=request.image_mode,
                              batch_bytes=request.batch_bytes)
        step, so = request.images_per_shard, request.storage_options
        shards = tuple(
            Shard(self.kind, tuple(files[i:i + step]), 0, 0, options, so,
                  sum(f.size for f in files[i:i + step]))
            for i in range(0, len(files), step)
        )
        return Source(self.kind, "NHWC", None, shards, options, so)

    def shard_id(self, shard: Shard) -> str:
        if len(shard.files) == 1:
            return f"image:{shard.files[0].url}"
        digest = hashlib.sha1("\n".join(f.url for f in shard.files).encode()).hexdigest()
        return f"image:{shard.files[0].url}..{shard.files[-1].url}#{len(shard.files)}:{digest[:12]}"

    def where(self, shard: Shard) -> str:
        first = display(shard.files[0].url)
        return first if len(shard.files) == 1 else f"{first} (+{len(shard.files) - 1} images)"

    def unit(self, options: ReadOptions) -> str:
        return "images"

    def decodes(self, options: ReadOptions) -> bool:
        return True

    def holds_gil(self, source: Source) -> bool:
        """Only for small files: Pillow decodes larger ones with the GIL released."""
        files = sum(len(s.files) for s in source.shards)
        return source.nbytes < THREAD_MIN_FILE_BYTES * max(1, files)

    def batches(self, shard: Shard, skip_bad: bool) -> Iterator[np.ndarray]:
        for _where, image in self.images(shard, skip_bad, skipped=[]):
            yield image[None]

    def reduce(self, shard: Shard, histogram: bool, nan_policy: str, skip_bad: bool,
               read_threads: bool, ignore_value: float | int | None = None) -> ShardResult:
        skipped: list[tuple[str, str]] = []
        parts, n = reduce_images(self.images(shard, skip_bad, skipped), histogram, nan_policy,
                                 shard.options.feature_names, ignore_value)
        return ShardResult(shard.id, parts, n, shard.nbytes, tuple(skipped))

    def check(self, source: Source, results: Mapping[str, ShardResult]) -> None:
        check_one_bit_depth(source, results)

    def images(self, shard: Shard, skip_bad: bool,
               skipped: list[tuple[str, str]]) -> Iterator[tuple[str, np.ndarray]]:
        """``(where, image)`` for each file of the shard; bad ones go to ``skipped``."""
        fs, _ = fs_of(shard.files[0].url, shard.storage_options)  # one filesystem per shard
        for info in shard.files:
            where = display(info.url)
            try:
                with fs.open(fs._strip_protocol(info.url), "rb") as f:
                    data = f.read()
            except (OSError, PermissionError) as exc:
                if isinstance(exc, StreamnormError):
                    raise
                raise SourceError(f"{where}: cannot read file ({one_line(exc)})") from exc
            try:
                records = decode_records(data, shard.options.image_mode, where)
            except BadRecordError as exc:
                if not skip_bad:
                    raise
                skipped.append((exc.where, exc.reason))
                continue
            yield from records
