"""Chunked arrays: Zarr stores (v2 and v3, through zarr) and HDF5 files (through h5py).

A store or file may hold many arrays; ``array=`` (``--array NAME``) names the
one to read by its path inside (``"group/temperature"``), and may be left out
when there is only one numeric array. ``layout=`` says what it holds (default
``"N"`` for 1-D, ``"NF"`` for 2-D arrays, as ``.npy``). Shards are runs of
whole chunks along the first (row) axis, about ``shard_bytes`` (default
:data:`~streamnorm.sources.base.DEFAULT_SHARD_BYTES`) of decoded data each, and
a shard is read in blocks of whole chunks; an array whose first axis is its
feature axis is one shard.

Missing data
------------
A value that the array declares missing in its attributes, ``_FillValue``
(netCDF/CF, xarray), ``nodata`` (rasters) or ``missing_value`` (CF), in that
order, is recorded as :attr:`Source.nodata` (and in the run's description);
it is *not* masked yet. Zarr's own ``fill_value`` and HDF5's dataset fill
value are never taken as missing data: they are what unwritten chunks read
as (0 unless set), which in weather, microscopy and remote-sensing arrays is
usually a real value (0 degrees, a dark pixel); declare missing data with one
of the attributes instead.

Zarr stores are folders (or fsspec URLs of folders) holding ``.zarray``,
``.zgroup`` or ``zarr.json``; folders named ``*.zarr`` inside the folders
given are stores too. HDF5 files end in ``.h5`` or ``.hdf5`` (or start with
the HDF5 signature).

Examples
--------
>>> import tempfile, numpy as np, h5py
>>> from streamnorm.sources import open_source
>>> tmp = tempfile.TemporaryDirectory(); path = tmp.name + "/a.h5"
>>> with h5py.File(path, "w") as f:
...     _ = f.create_dataset("x", data=np.arange(12, dtype=np.uint16).reshape(6, 2), chunks=(2, 2))
>>> src = open_source([path], array="x")
>>> src.kind, src.layout, len(src.shards), src.shards[0].compute().stats.mean.tolist()
('hdf5', 'NF', 1, [5.0, 6.0])
>>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import LayoutError
from ..layout import parse_layout
from .base import (
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

#: What to install when zarr or h5py is missing.
ZARR_EXTRA = "pip install 'streamnorm[zarr]'"
HDF5_EXTRA = "pip install 'streamnorm[hdf5]'"
HDF5_SUFFIXES = (".h5", ".hdf5")
HDF5_MAGIC = (b"\x89HDF\r\n\x1a\n",)
ZARR_SUFFIXES = (".zarr",)
#: Attributes that declare a missing-data value, in the order they are looked up.
NODATA_ATTRIBUTES = ("_FillValue", "nodata", "missing_value")
_ZARR_METADATA = (".zarray", ".zgroup", "zarr.json")


@dataclass(frozen=True)
class ArrayInfo:
    """What :meth:`ArrayFormat.open` needs to know of one array: shape, dtype, row chunk, attributes."""

    shape: tuple[int, ...]
    dtype: np.dtype
    row_chunk: int | None
    attrs: Mapping[str, Any]


def declared_nodata(attrs: Mapping[str, Any]) -> tuple[float, str] | None:
    """``(value, attribute)`` of the first missing-data attribute holding one number, or ``None``.

    Examples
    --------
    >>> declared_nodata({"units": "K", "_FillValue": -9999})
    (-9999.0, '_FillValue')
    >>> declared_nodata({"nodata": [0]}), declared_nodata({"missing_value": [1, 2]})
    ((0.0, 'nodata'), None)
    """
    for name in NODATA_ATTRIBUTES:
        if name not in attrs:
            continue
        value = np.asarray(attrs[name])
        if value.size == 1 and value.dtype.kind in "biuf":
            return float(value.ravel()[0]), name
    return None


class ArrayFormat(Format):
    """What Zarr and HDF5 share: pick an array, cut its chunk grid into shards, read blocks."""

    takes_array = True
    extra: ClassVar[str] = ""
    library: ClassVar[str] = ""
    container: ClassVar[str] = ""

    # -- what a subclass provides --------------------------------------------
    def list_arrays(self, info: FileInfo, so: Mapping[str, Any]) -> dict[str, ArrayInfo]:
        """Every array of the store or file by its path inside (numeric or not)."""
        raise NotImplementedError

    def open_array(self, info: FileInfo, name: str,
                   so: Mapping[str, Any]) -> contextlib.AbstractContextManager[Any]:
        """A context giving the array named ``name`` (sliceable along its first axis)."""
        raise NotImplementedError

    def file_info(self, info: FileInfo, so: Mapping[str, Any]) -> FileInfo:
        """``info`` with the size and version that the checkpoint compares (default: as found)."""
        return info

    # -- opening ---------------------------------------------------------------
    def open(self, files: Sequence[FileInfo], request: OpenRequest) -> Source:
        reject_table_options(self.kind, files, request)
        so = request.storage_options
        files = [self.file_info(info, so) for info in files]
        picked = [self._pick(info, self.list_arrays(info, so), request.array) for info in files]
        layout = request.layout or _default_layout(files[0], picked[0][0], picked[0][1].shape)
        parsed = parse_layout(layout)
        for info, (name, arr) in zip(files, picked):
            parsed.check_rank(len(arr.shape), what=f"{self._where(info.url, name)} (shape {arr.shape})")
        if parsed.feature_axis is not None and len({a.shape[parsed.feature_axis] for _, a in picked}) > 1:
            raise SourceError(
                "the arrays disagree on their number of features: "
                + ", ".join(f"{self._where(i.url, n)} {a.shape}" for i, (n, a) in zip(files, picked))
            )
        nodata = _one_nodata([(self._where(i.url, n), a) for i, (n, a) in zip(files, picked)])
        options = ReadOptions(layout=layout, batch_bytes=request.batch_bytes, array=picked[0][0])
        shards = []
        for info, (name, arr) in zip(files, picked):
            opts = options if name == options.array else ReadOptions(
                layout=layout, batch_bytes=request.batch_bytes, array=name)
            shards.extend(self._cut(info, arr, opts, so, parsed.feature_axis == 0, request.shard_bytes))
        return Source(self.kind, layout, None, tuple(shards), options, so,
                      nodata=None if nodata is None else nodata[0],
                      nodata_attribute=None if nodata is None else nodata[1])

    def _pick(self, info: FileInfo, arrays: Mapping[str, ArrayInfo],
              wanted: str | None) -> tuple[str, ArrayInfo]:
        numeric = {n: a for n, a in arrays.items() if a.dtype.kind in "biuf" and a.shape}
        listing = ", ".join(sorted(numeric)) or "none"
        if wanted is not None:
            key = wanted.strip("/")
            if key not in arrays:
                raise SourceError(
                    f"{display(info.url)}: no array {wanted!r} in this {self.container}; "
                    f"its numeric arrays: {listing}"
                )
            if key not in numeric:
                found = arrays[key]
                raise SourceError(
                    f"{self._where(info.url, key)}: holds dtype {found.dtype} and shape {found.shape}; "
                    f"only bool, integer and float arrays of at least one axis have statistics "
                    f"(numeric arrays: {listing})"
                )
            return key, numeric[key]
        if len(numeric) == 1:
            return next(iter(numeric.items()))
        if not numeric:
            raise SourceError(f"{display(info.url)}: this {self.container} holds no numeric array")
        raise SourceError(
            f"{display(info.url)}: this {self.container} holds {len(numeric)} numeric arrays "
            f"({listing}); pass --array NAME to choose one"
        )

    def _cut(self, info: FileInfo, arr: ArrayInfo, options: ReadOptions, so: dict[str, Any],
             whole: bool, shard_bytes: int) -> list[Shard]:
        n = arr.shape[0]
        row_bytes = _row_bytes(arr.shape, arr.dtype)
        if whole:  # cutting along the feature axis would split features
            return [Shard(self.kind, (info,), 0, n, options, so, n * row_bytes)]
        step = _whole_chunks(shard_bytes // row_bytes, arr.row_chunk)
        return [Shard(self.kind, (info,), lo, min(n, lo + step), options, so,
                      (min(n, lo + step) - lo) * row_bytes) for lo in range(0, max(n, 1), step)]

    # -- describing ------------------------------------------------------------
    def shard_id(self, shard: Shard) -> str:
        return f"{shard.kind}:{shard.files[0].url}#array={shard.options.array}&rows={shard.start}-{shard.stop}"

    def where(self, shard: Shard) -> str:
        return f"{self._where(shard.files[0].url, shard.options.array)} ({self.span(shard.start, shard.stop)})"

    def _where(self, url: str, name: str | None) -> str:
        return f"{display(url)} array {name or '/'!r}"

    # -- reading ---------------------------------------------------------------
    def _blocks(self, shard: Shard, skip_bad: bool,
                skipped: list[tuple[str, str]]) -> Iterator[np.ndarray]:
        info, name = shard.files[0], shard.options.array or ""
        with self.open_array(info, name, shard.storage_options) as array:
            row_bytes = _row_bytes(tuple(array.shape), np.dtype(array.dtype))
            chunk = _row_chunk(array)
            whole = parse_layout(shard.options.layout).feature_axis == 0
            step = shard.stop - shard.start if whole else _whole_chunks(
                shard.options.batch_bytes // row_bytes, chunk)
            for lo in range(shard.start, shard.stop, max(step, 1)):
                hi = min(lo + step, shard.stop)
                try:
                    block = np.asarray(array[lo:hi])
                except Exception as exc:  # codecs and stores raise anything; name the rows
                    if not skip_bad:
                        raise SourceError(f"{self._where(info.url, name)} ({self.span(lo, hi)}): cannot "
                                          f"read ({one_line(exc)}); pass --skip-bad to skip unreadable "
                                          f"chunks") from exc
                    # Skip only the chunks that fail, not the whole block.
                    yield from self._chunk_by_chunk(array, info.url, name, lo, hi, chunk or 1, skipped)
                    continue
                yield block

    def _chunk_by_chunk(self, array: Any, url: str, name: str, lo: int, hi: int, chunk: int,
                        skipped: list[tuple[str, str]]) -> Iterator[np.ndarray]:
        for start in range(lo, hi, chunk):
            stop = min(start + chunk, hi)
            try:
                block = np.asarray(array[start:stop])
            except Exception as exc:  # as above: any codec error is this chunk's
                skipped.append((f"{self._where(url, name)} ({self.span(start, stop)})", one_line(exc)))
                continue
            yield block

    def batches(self, shard: Shard, skip_bad: bool) -> Iterator[np.ndarray]:
        yield from self._blocks(shard, skip_bad, [])

    def reduce(self, shard: Shard, histogram: bool, nan_policy: str, skip_bad: bool,
               read_threads: bool, ignore_value: float | int | None = None) -> ShardResult:
        from ..accumulate import StatsAccumulator

        acc = StatsAccumulator(layout=shard.options.layout, feature_names=shard.options.feature_names,
                               histogram=histogram, nan_policy=nan_policy, ignore_value=ignore_value)
        rows, skipped = 0, []
        for block in self._blocks(shard, skip_bad, skipped):
            acc.update(block)
            rows += block.shape[0]
        parts = (acc.result(),) if rows else ()
        return ShardResult(shard.id, parts, rows, shard.nbytes, tuple(skipped))


# ---------------------------------------------------------------------------
# Zarr
# ---------------------------------------------------------------------------


def _zarr() -> Any:
    try:
        import zarr
    except ImportError:
        raise SourceError(f"reading Zarr stores needs zarr, which is not installed: {ZARR_EXTRA}") from None
    return zarr


class ZarrFormat(ArrayFormat):
    """Zarr stores, format 2 and 3 (the extra ``zarr``), local or any fsspec URL."""

    kind = "zarr"
    folder_suffixes = ZARR_SUFFIXES
    noun = "Zarr"
    folder_noun = "Zarr"
    plural = "Zarr stores"
    container = "Zarr store"

    def claims_folder(self, fs: Any, path: str) -> bool:
        base = path.rstrip("/")
        return any(fs.exists(f"{base}/{meta}") for meta in _ZARR_METADATA)

    def file_info(self, info: FileInfo, so: Mapping[str, Any]) -> FileInfo:
        # A store is a folder: its size and version are those of all its files,
        # so that a rewritten chunk is seen by the checkpoint.
        fs, path = fs_of(info.url, so)
        try:
            found = fs.find(path, detail=True)
        except OSError as exc:
            raise SourceError(f"{display(info.url)}: cannot list the Zarr store ({one_line(exc)})") from exc
        digest = hashlib.sha1()
        size = 0
        for p, meta in sorted(found.items()):
            size += int(meta.get("size") or 0)
            stamp = meta.get("mtime") or meta.get("ETag") or meta.get("LastModified") or ""
            digest.update(f"{p.removeprefix(path)}\0{meta.get('size')}\0{stamp}\n".encode())
        return FileInfo(info.url, size, digest.hexdigest())

    def _open(self, url: str, so: Mapping[str, Any]) -> Any:
        zarr = _zarr()
        local = url.removeprefix("file://")
        try:
            if url != local or "://" not in url:
                return zarr.open(store=local, mode="r")
            return zarr.open(store=url, mode="r", storage_options=dict(so) or None)
        except Exception as exc:  # zarr raises many kinds for a damaged store
            raise SourceError(f"{display(url)}: not a readable Zarr store ({one_line(exc)})") from exc

    def list_arrays(self, info: FileInfo, so: Mapping[str, Any]) -> dict[str, ArrayInfo]:
        zarr = _zarr()
        node = self._open(info.url, so)
        if isinstance(node, zarr.Array):
            members = [("", node)]
        else:
            members = [(p, a) for p, a in node.members(max_depth=None) if isinstance(a, zarr.Array)]
        return {p: ArrayInfo(tuple(a.shape), np.dtype(a.dtype), _row_chunk(a), dict(a.attrs))
                for p, a in members}

    @contextlib.contextmanager
    def open_array(self, info: FileInfo, name: str, so: Mapping[str, Any]) -> Iterator[Any]:
        node = self._open(info.url, so)
        yield node[name] if name else node


# ---------------------------------------------------------------------------
# HDF5
# ---------------------------------------------------------------------------


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise SourceError(f"reading HDF5 files needs h5py, which is not installed: {HDF5_EXTRA}") from None
    return h5py


class Hdf5Format(ArrayFormat):
    """HDF5 files (the extra ``hdf5``): contiguous or chunked datasets, any compression h5py reads."""

    kind = "hdf5"
    suffixes = HDF5_SUFFIXES
    magic = HDF5_MAGIC
    noun = "HDF5"
    folder_noun = "HDF5"
    plural = "HDF5 files"
    container = "HDF5 file"
    # Shards run in threads: h5py serializes its reads under one lock, but the
    # kernels release the GIL, and a process pool costs seconds to start.

    @contextlib.contextmanager
    def _file(self, url: str, so: Mapping[str, Any]) -> Iterator[Any]:
        h5py = _h5py()
        fs, path = fs_of(url, so)
        try:
            with contextlib.ExitStack() as stack:
                target = path if is_local(fs) else stack.enter_context(fs.open(path, "rb"))
                handle = stack.enter_context(h5py.File(target, "r"))
                yield handle
        except OSError as exc:
            raise SourceError(f"{display(url)}: not a readable HDF5 file ({one_line(exc)})") from exc

    def list_arrays(self, info: FileInfo, so: Mapping[str, Any]) -> dict[str, ArrayInfo]:
        h5py = _h5py()
        found: dict[str, ArrayInfo] = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                chunks = obj.chunks
                found[name] = ArrayInfo(tuple(obj.shape), np.dtype(obj.dtype),
                                        None if not chunks else int(chunks[0]), dict(obj.attrs))

        with self._file(info.url, so) as handle:
            handle.visititems(visit)
        return found

    @contextlib.contextmanager
    def open_array(self, info: FileInfo, name: str, so: Mapping[str, Any]) -> Iterator[Any]:
        with self._file(info.url, so) as handle:
            yield handle[name]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _row_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return max(int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize, 1)


def _row_chunk(array: Any) -> int | None:
    """Rows of one stored chunk (a zarr v3 shard when sharded); ``None`` when not chunked."""
    chunks = getattr(array, "shards", None) or getattr(array, "chunks", None)
    return int(chunks[0]) if chunks else None


def _whole_chunks(rows: int, chunk: int | None) -> int:
    """``rows`` rounded down to whole chunks, at least one chunk (one row when not chunked)."""
    if not chunk:
        return max(rows, 1)
    return max(rows // chunk, 1) * chunk


def _default_layout(info: FileInfo, name: str, shape: tuple[int, ...]) -> str:
    if len(shape) > 2:
        raise LayoutError(
            f"{display(info.url)} array {name or '/'!r} has shape {shape}; pass --layout to say "
            f"what it holds (e.g. 'NCHW' or 'NTHWC')"
        )
    return "NF" if len(shape) == 2 else "N"


def _one_nodata(arrays: Sequence[tuple[str, ArrayInfo]]) -> tuple[float, str] | None:
    """The missing-data value all arrays declare (or ``None``); an error when they differ."""
    declared = [(where, declared_nodata(a.attrs)) for where, a in arrays]
    values = {None if d is None else (repr(d[0]), d[1]) for _, d in declared}
    if len(values) > 1:
        raise SourceError(
            "the arrays declare different missing-data values: "
            + ", ".join(f"{w} {'none' if d is None else f'{d[1]}={d[0]!r}'}" for w, d in declared)
            + "; compute them separately"
        )
    return declared[0][1]
