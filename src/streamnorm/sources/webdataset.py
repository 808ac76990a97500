"""WebDataset ``.tar`` shards: one tar file per shard, streamed, never extracted.

A *sample* is a run of consecutive members sharing a key: a member's path up
to the first dot of its file name (webdataset's convention), so
``000017.jpg`` and ``000017.cls`` are the members ``jpg`` and ``cls`` of
sample ``000017``. Each sample contributes one member:

- by default its one image member (``jpg``, ``jpeg``, ``png``, ``webp``,
  ``bmp``, ``gif``, ``tif``, ``tiff``), decoded to ``(H, W, C)`` uint8, or
  uint16 for 16-bit images, exactly as image files are (layout ``NHWC``);
- ``key="png"`` (``--key png``) picks that member when a sample has several;
- ``key="npy"`` (or any key ending in ``npy``, e.g. ``"depth.npy"``) reads
  that member with ``np.load(allow_pickle=False)``: each member is one sample,
  so ``layout`` names a leading ``N`` axis over the samples followed by the
  member's own axes (default ``"N"`` for scalars, ``"NF"`` for 1-D members).

The tar is read with Python's :mod:`tarfile` through fsspec (local paths,
globs, brace ranges, any URL), so reading needs no extra package. A member
that cannot be decoded is a :class:`~streamnorm.sources.BadRecordError`
naming the shard and the member (skipped and reported under ``skip_bad``); a
truncated or corrupt tar is an error naming the shard and the last member
read (under ``skip_bad`` the rest of that shard is skipped and reported).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import LayoutError, StreamnormError
from ..layout import parse_layout
from ._decode import check_one_bit_depth, decode_records, reduce_images
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
)

WEBDATASET_SUFFIXES = (".tar", ".tar.gz", ".tgz")
#: Member extensions that are images (webdataset's decoder names, lower case).
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


class BadMemberError(BadRecordError):
    """A member of a WebDataset sample that cannot be decoded (``where``: shard and member)."""

    def __init__(self, where: str, reason: str) -> None:
        SourceError.__init__(self, f"{where}: cannot decode member ({reason})")
        self.where = where
        self.reason = reason


def split_key(name: str) -> tuple[str, str]:
    """``(sample key, extension)`` of a member path, as webdataset splits it.

    Examples
    --------
    >>> split_key("train/000017.seg.png")
    ('train/000017', 'seg.png')
    >>> split_key("README")
    ('README', '')
    """
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def is_array_key(key: str | None) -> bool:
    """Whether members named ``key`` are ``.npy`` arrays (``"npy"``, ``"depth.npy"``)."""
    return key is not None and (key == "npy" or key.endswith(".npy"))


class WebDatasetFormat(Format):
    """WebDataset tar shards (one shard per tar file)."""

    kind = "webdataset"
    suffixes = WEBDATASET_SUFFIXES
    noun = "WebDataset (.tar)"
    folder_noun = "WebDataset .tar"
    plural = "WebDataset .tar shards"
    uses_key = True

    def open(self, files: Sequence[FileInfo], request: OpenRequest) -> Source:
        if request.columns or request.image_column:
            raise SourceError(f"--columns/--image-column apply to Parquet files, but the sources are "
                              f"WebDataset shards (e.g. {display(files[0].url)}); use --key")
        key = None if request.key is None else request.key.lower().lstrip(".")
        if key is not None and not key:
            raise SourceError("--key must name a member extension, e.g. jpg or npy")
        so = request.storage_options
        if is_array_key(key):
            layout = request.layout or _default_layout(files, key, so)
            parse_layout(layout)
        else:
            if key is not None and key.rpartition(".")[2] not in IMAGE_KEYS:
                raise SourceError(
                    f"--key {request.key!r}: WebDataset members are read as images "
                    f"({', '.join(IMAGE_KEYS)}) or .npy arrays (npy); choose one of those"
                )
            if request.layout not in (None, "NHWC"):
                raise LayoutError(f"WebDataset images are read as 'NHWC'; drop --layout "
                                  f"{request.layout!r} (or pass --key npy for .npy members)")
            layout = "NHWC"
        options = ReadOptions(layout=layout, image_mode=request.image_mode,
                              batch_bytes=request.batch_bytes, key=key)
        shards = tuple(Shard(self.kind, (f,), 0, 0, options, so, f.size) for f in files)
        return Source(self.kind, layout, None, shards, options, so)

    def shard_id(self, shard: Shard) -> str:
        return f"{self.kind}:{shard.files[0].url}"

    def where(self, shard: Shard) -> str:
        return display(shard.files[0].url)

    def unit(self, options: ReadOptions) -> str:
        return "samples"

    def decodes(self, options: ReadOptions) -> bool:
        return True

    def batches(self, shard: Shard, skip_bad: bool) -> Iterator[np.ndarray]:
        for _where, value in self.values(shard, skip_bad, skipped=[]):
            yield value[None]

    def reduce(self, shard: Shard, histogram: bool, nan_policy: str, skip_bad: bool,
               read_threads: bool, ignore_value: float | int | None = None) -> ShardResult:
        skipped: list[tuple[str, str]] = []
        values = self.values(shard, skip_bad, skipped)
        if is_array_key(shard.options.key):
            parts, n = _reduce_arrays(values, shard.options, histogram, nan_policy, ignore_value)
        else:
            parts, n = reduce_images(values, histogram, nan_policy, shard.options.feature_names,
                                     ignore_value)
        return ShardResult(shard.id, parts, n, shard.nbytes, tuple(skipped))

    def check(self, source: Source, results: Mapping[str, ShardResult]) -> None:
        if not is_array_key(source.options.key):
            check_one_bit_depth(source, results)

    def values(self, shard: Shard, skip_bad: bool,
               skipped: list[tuple[str, str]]) -> Iterator[tuple[str, np.ndarray]]:
        """``(where, value)`` of each sample's chosen member; bad ones go to ``skipped``."""
        options = shard.options
        for where, members in samples(shard.files[0].url, shard.storage_options, skip_bad, skipped):
            try:
                name, data = _choose(members, options.key, where)
                if is_array_key(options.key):
                    records = [(f"{where}.{name}", _load_npy(data, f"{where}.{name}"))]
                else:
                    records = decode_records(data, options.image_mode, f"{where}.{name}")
            except BadRecordError as exc:
                if not skip_bad:
                    raise BadMemberError(exc.where, exc.reason) from None
                skipped.append((exc.where, exc.reason))
                continue
            yield from records


def samples(url: str, storage_options: Mapping[str, Any], skip_bad: bool = False,
            skipped: list[tuple[str, str]] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(where, {extension: bytes})`` of each sample of one tar shard, streamed in order.

    ``where`` is ``"<shard> member <key>"``. A corrupt tar raises
    :class:`SourceError` naming the shard and the last member read; under
    ``skip_bad`` the rest of the shard is recorded in ``skipped`` instead.
    """
    shard = display(url)
    fs, path = fs_of(url, storage_options)
    last = "its first member"
    current: str | None = None
    members: dict[str, bytes] = {}
    try:
        with fs.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = split_key(info.name)
                if key != current and current is not None:
                    yield f"{shard} member {current}", members
                    members = {}
                current = key
                extracted = tar.extractfile(info)
                members[ext] = extracted.read() if extracted is not None else b""
                last = f"member {info.name}"
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        if isinstance(exc, StreamnormError):
            raise
        reason = f"truncated or corrupt tar after {last} ({one_line(exc)})"
        if not skip_bad or skipped is None:
            raise SourceError(f"{shard}: {reason}; pass --skip-bad to skip the rest of this shard"
                              ) from exc
        skipped.append((shard, reason))
        return
    if current is not None:
        yield f"{shard} member {current}", members


def _choose(members: Mapping[str, bytes], key: str | None, where: str) -> tuple[str, bytes]:
    """The member a sample contributes: ``key``'s, or its one image."""
    if key is not None:
        if key not in members:
            raise BadRecordError(where, f"the sample has no {key!r} member (it has "
                                        f"{', '.join(sorted(members)) or 'none'}); choose --key")
        return key, members[key]
    images = [ext for ext in members if ext.rpartition(".")[2] in IMAGE_KEYS]
    if len(images) != 1:
        found = ", ".join(sorted(members)) or "none"
        what = "several image members" if images else "no image member"
        raise BadRecordError(where, f"the sample has {what} ({found}); pass --key to choose one "
                                    f"(--key npy for .npy arrays)")
    return images[0], members[images[0]]


def _load_npy(data: bytes, where: str) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadRecordError(where, f"not a readable .npy array ({one_line(exc)})") from exc
    if not isinstance(array, np.ndarray):
        raise BadRecordError(where, "holds an .npz archive, not an .npy array")
    if array.dtype.kind not in "biuf":
        raise BadRecordError(where, f"holds dtype {array.dtype}; only bool, integer and float "
                                    f"arrays have statistics")
    return array


def _default_layout(files: Sequence[FileInfo], key: str, so: Mapping[str, Any]) -> str:
    """``"N"`` or ``"NF"`` from the first sample's member; higher ranks need ``--layout``."""
    for where, members in samples(files[0].url, so):
        name, data = _choose(members, key, where)
        array = _load_npy(data, f"{where}.{name}")
        if array.ndim > 1:
            raise LayoutError(
                f"{where}.{name} holds a {array.ndim}-D array of shape {array.shape}; pass "
                f"--layout to say what a batch of them holds (a leading N, e.g. 'NCHW')"
            )
        return "NF" if array.ndim == 1 else "N"
    raise SourceError(f"{display(files[0].url)}: holds no samples")


def _reduce_arrays(values: Iterator[tuple[str, np.ndarray]], options: ReadOptions,
                   histogram: bool, nan_policy: str,
                   ignore_value: float | int | None = None) -> tuple[tuple[Any, ...], int]:
    """Statistics of ``.npy`` members, one sample each, stacked while their shape holds."""
    from ..accumulate import StatsAccumulator

    layout = parse_layout(options.layout)
    acc = StatsAccumulator(layout=options.layout, feature_names=options.feature_names,
                           histogram=histogram, nan_policy=nan_policy, ignore_value=ignore_value)
    pending: list[np.ndarray] = []
    pending_bytes, n = 0, 0

    def flush() -> None:
        nonlocal pending_bytes
        if pending:
            acc.update(np.stack(pending))
            pending.clear()
            pending_bytes = 0

    for where, array in values:
        layout.check_rank(array.ndim + 1, what=f"{where} (one sample of shape {array.shape})")
        if pending and (array.shape != pending[0].shape or array.dtype != pending[0].dtype):
            flush()
        pending.append(array)
        pending_bytes += array.nbytes
        n += 1
        if pending_bytes >= options.batch_bytes:
            flush()
    flush()
    return ((acc.result(),) if n else ()), n
