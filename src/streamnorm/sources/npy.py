""".npy arrays: memory-mapped, cut into row ranges along the first axis.

``layout=`` says what an array holds (default ``"N"`` for 1-D, ``"NF"`` for
2-D arrays). Local files are memory-mapped (``allow_pickle=False``); remote
files are read by range requests. An array whose first axis is its feature
axis is one shard (cutting it would split features).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import LayoutError
from ..layout import parse_layout
from .base import (
    DEFAULT_SHARD_BYTES,
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
    is_local,
    one_line,
    reject_table_options,
)

NPY_SUFFIXES = (".npy",)


class NpyFormat(Format):
    """``.npy`` arrays (never unpickled)."""

    kind = "npy"
    suffixes = NPY_SUFFIXES
    magic = (b"\x93NUMPY",)
    noun = ".npy"
    folder_noun = ".npy"
    plural = ".npy arrays"

    def open(self, files: Sequence[FileInfo], request: OpenRequest) -> Source:
        reject_table_options(self.kind, files, request)
        so, layout = request.storage_options, request.layout
        headers = []
        for info in files:
            fs, path = fs_of(info.url, so)
            header = _npy_header(fs, path, info.url)
            if not header[0]:
                raise SourceError(f"{display(info.url)}: holds a scalar, not an array of samples")
            headers.append(header)
        if layout is None:
            shape = headers[0][0]
            if len(shape) > 2:
                raise LayoutError(
                    f"{display(files[0].url)} holds a {len(shape)}-D array of shape {shape}; "
                    f"pass --layout to say what it holds (e.g. 'NCHW' or 'NHWC')"
                )
            layout = "NF" if len(shape) == 2 else "N"
        parsed = parse_layout(layout)
        features = set()
        for info, (shape, _dtype, _fortran, _offset) in zip(files, headers):
            parsed.check_rank(len(shape), what=f"{display(info.url)} (shape {shape})")
            if parsed.feature_axis is not None:
                features.add(shape[parsed.feature_axis])
        if len(features) > 1:
            raise SourceError(
                "the .npy files disagree on their number of features: "
                + ", ".join(f"{display(i.url)} {h[0]}" for i, h in zip(files, headers))
            )
        options = ReadOptions(layout=layout, batch_bytes=request.batch_bytes)
        shards = []
        for info, (shape, dtype, _fortran, _offset) in zip(files, headers):
            n = shape[0]
            if parsed.feature_axis == 0:
                shards.append(Shard(self.kind, (info,), 0, n, options, so, info.size))
                continue
            row_bytes = max(int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize, 1)
            rows_per_shard = max(1, DEFAULT_SHARD_BYTES // row_bytes)
            for lo in range(0, max(n, 1), rows_per_shard):
                hi = min(n, lo + rows_per_shard)
                shards.append(Shard(self.kind, (info,), lo, hi, options, so,
                                    (hi - lo) * row_bytes))
        return Source(self.kind, layout, None, tuple(shards), options, so)

    def batches(self, shard: Shard, skip_bad: bool) -> Iterator[np.ndarray]:
        info = shard.files[0]
        fs, path = fs_of(info.url, shard.storage_options)
        header = _npy_header(fs, path, info.url)
        shape, dtype, fortran, offset = header
        local = is_local(fs)
        if parse_layout(shard.options.layout).feature_axis == 0:
            # Cutting along the feature axis would split features: one piece.
            yield _npy_local(path, info.url) if local else _npy_read_all(fs, path, header)
            return
        row_bytes = max(int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize, 1)
        step = max(1, shard.options.batch_bytes // row_bytes)
        if local or fortran:
            array = _npy_local(path, info.url) if local else _npy_read_all(fs, path, header)
            for lo in range(shard.start, shard.stop, step):
                yield array[lo:min(lo + step, shard.stop)]
            return
        with fs.open(path, "rb") as f:
            for lo in range(shard.start, shard.stop, step):
                hi = min(lo + step, shard.stop)
                f.seek(offset + lo * row_bytes)
                buf = f.read((hi - lo) * row_bytes)
                yield np.frombuffer(buf, dtype=dtype).reshape((hi - lo, *shape[1:]))

    def reduce(self, shard: Shard, histogram: bool, nan_policy: str, skip_bad: bool,
               read_threads: bool, ignore_value: float | int | None = None) -> ShardResult:
        from ..accumulate import StatsAccumulator

        acc = StatsAccumulator(layout=shard.options.layout,
                               feature_names=shard.options.feature_names,
                               histogram=histogram, nan_policy=nan_policy, ignore_value=ignore_value)
        rows = 0
        for chunk in self.batches(shard, skip_bad):
            acc.update(chunk)
            rows += chunk.shape[0]
        return ShardResult(shard.id, (acc.result(),), rows, shard.nbytes)


def _npy_local(path: str, url: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise SourceError(f"{display(url)}: not a numeric .npy array ({one_line(exc)})") from exc
    except OSError as exc:
        raise SourceError(f"{display(url)}: cannot read .npy file ({one_line(exc)})") from exc
    if not isinstance(array, np.ndarray):
        raise SourceError(f"{display(url)}: holds no array (an .npz archive?)")
    return array


def _npy_header(fs: Any, path: str, url: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    from numpy.lib import format as npformat

    try:
        with fs.open(path, "rb") as f:
            version = npformat.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npformat.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = npformat.read_array_header_2_0(f)
            else:  # pragma: no cover - numpy raises for unknown versions already
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise SourceError(f"{display(url)}: not a readable .npy file ({one_line(exc)})") from exc
    if dtype.hasobject or dtype.kind not in "biuf":
        raise SourceError(
            f"{display(url)}: holds dtype {dtype}; only bool, integer and float arrays have "
            f"statistics (object arrays are never unpickled)"
        )
    return tuple(int(s) for s in shape), dtype, bool(fortran), int(offset)


def _npy_read_all(fs: Any, path: str, header: tuple[Any, ...]) -> np.ndarray:
    shape, dtype, fortran, offset = header
    with fs.open(path, "rb") as f:
        f.seek(offset)
        buf = f.read(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")
