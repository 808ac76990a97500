"""Offline readers: Parquet files, image files and ``.npy`` arrays, cut into shards.

A *source* is what a user points ``streamnorm compute`` at: files, folders,
globs or fsspec URLs. :func:`open_source` resolves them once and cuts the data
into :class:`Shard` objects: a range of row groups of one Parquet file, a run
of image files, or a range of rows of one ``.npy`` file. A shard is a small,
picklable value (URLs, sizes, versions, read options and the storage options,
all explicit), so it can be read in this process, in a process pool or on a
Dask worker; :meth:`Shard.compute` returns its partial :class:`~streamnorm.Stats`
and the engine merges the partials.

What each kind of file becomes
------------------------------
Parquet (``.parquet``, ``.pq``, ``.parq``)
    Numeric columns (every integer and floating-point column unless
    ``columns=`` names some; booleans only when named) -> layout ``NF``, one
    feature per column, named after it. Columns are read record batch by
    record batch and handed to the kernels without a copy where Arrow's buffer
    is a plain numpy array (no nulls, fixed-width type). Nulls are non-finite
    values under ``nan_policy``: in floating-point columns they become NaN; in
    integer columns they are skipped and counted in ``nan_count`` under
    ``"omit"``, and are an error under ``"raise"`` and ``"propagate"``
    (integer statistics are exact sums, which cannot hold a NaN; omit them or
    cast the column to float).
    One *tensor column* may be selected instead: a fixed-size list (nested
    fixed-size lists, or Arrow's ``fixed_shape_tensor``) per row. A flat list
    of ``k`` values gives ``k`` features named ``col[0]``... (layout ``NF``);
    higher-rank tensors need ``layout=`` (e.g. ``"NCHW"``).
    ``image_column=`` decodes a binary column of encoded images (or a
    Hugging Face ``struct<bytes, path>`` image column) -> ``NHWC``, as image files.
Images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``, ``.webp``, ``.tif``,
``.tiff``; folders searched recursively, so ImageFolder-style class folders work)
    Decoded to ``NHWC`` uint8 (Pillow), or uint16 for 16-bit images, sample for
    sample: 16-bit PNGs of every colour type (gray, gray+alpha, RGB, RGBA;
    interlaced too) by :mod:`streamnorm._png`, 16-bit gray TIFFs by Pillow.
    ``image_mode="RGB"`` (default) converts grayscale, palette and CMYK images
    to RGB (a gray value is repeated in the three channels) and *drops* the
    alpha channel of RGBA/LA images (no compositing). ``image_mode="L"`` gives
    one luma channel (ITU-R 601-2 for colour images, in integers as Pillow
    computes it, at 8 or 16 bits). Images that cannot be read exactly
    (32-bit or floating-point samples, 16-bit colour TIFFs) and files with
    several frames are bad records, never reduced silently; a source mixing
    8-bit and 16-bit images is an error (their values are on different scales).
``.npy``
    Memory-mapped (``allow_pickle=False``); ``layout=`` says what the array
    holds (default ``"N"`` for 1-D, ``"NF"`` for 2-D arrays). Shards are row
    ranges along the first axis. Remote ``.npy`` files are read by range
    requests instead.

Hidden files and folders (names starting with ``.`` or ``_``, e.g.
``_SUCCESS``) are skipped inside folders, as pyarrow datasets do.

Examples
--------
>>> import tempfile, numpy as np, pyarrow as pa, pyarrow.parquet as pq
>>> from streamnorm.sources import open_source
>>> tmp = tempfile.TemporaryDirectory(); d = tmp.name
>>> pq.write_table(pa.table({"x": np.arange(10.0), "y": np.arange(10)}), f"{d}/t.parquet")
>>> src = open_source([d])
>>> src.kind, src.layout, src.feature_names, len(src.shards)
('parquet', 'NF', ('x', 'y'), 1)
>>> src.shards[0].compute().stats.mean.tolist()
[4.5, 4.5]
>>> tmp.cleanup()
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import DTypeError, LayoutError, NonFiniteError, StreamnormError
from .layout import parse_layout
from .stats import Stats, common_dtype

__all__ = [
    "IMAGE_SUFFIXES",
    "NPY_SUFFIXES",
    "PARQUET_SUFFIXES",
    "BadRecordError",
    "FileInfo",
    "Shard",
    "ShardResult",
    "Source",
    "SourceError",
    "combine_parts",
    "concat_features",
    "mixed_bit_depths",
    "open_source",
    "select_features",
]

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
KINDS = ("parquet", "image", "npy")
IMAGE_FORMATS = "PNG, JPEG, BMP, GIF, WebP, TIFF"
IMAGE_MODES = ("RGB", "L")

#: Default size of one Parquet shard (compressed bytes of whole row groups).
DEFAULT_SHARD_BYTES = 64 * 2**20
#: Default number of image files per shard.
DEFAULT_IMAGES_PER_SHARD = 256
#: Decoded images of one size are stacked up to this many bytes per kernel call.
IMAGE_STACK_BYTES = 8 * 2**20
#: Default bytes of decoded Parquet data read at once (whole row groups up to this).
DEFAULT_BATCH_BYTES = 64 * 2**20

_MAGIC = {
    b"PAR1": "parquet",
    b"\x89PNG": "image",
    b"\xff\xd8\xff": "image",
    b"\x93NUMPY": "npy",
    b"GIF87a": "image",
    b"GIF89a": "image",
    b"BM": "image",
    b"II*\x00": "image",
    b"MM\x00*": "image",
}
_GLOB_CHARS = frozenset("*?[")


class SourceError(StreamnormError, OSError):
    """A source cannot be read: missing path, unreadable or malformed file, bad columns."""


class BadRecordError(SourceError):
    """One record (an image file, an encoded image in a row) cannot be decoded.

    ``where`` names the record (a path, or ``path row N``); ``reason`` says why.
    ``skip_bad=True`` skips such records and counts them instead of raising.
    """

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: cannot decode image ({reason})")
        self.where = where
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # keep it picklable across processes
        return (type(self), (self.where, self.reason))


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FileInfo:
    """One file of a source: its URL, size in bytes and version (mtime or ETag)."""

    url: str
    size: int
    version: str

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def describe(self) -> dict[str, Any]:
        return {"path": self.url, "size": self.size, "version": self.version}


def _fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    from .fsutil import resolve_url

    return resolve_url(url, storage_options)


def _version(info: Mapping[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "created"):
        value = info.get(key)
        if value is not None:
            return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return ""


def _display(url: str) -> str:
    return url.removeprefix("file://")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _kind_of_name(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(IMAGE_SUFFIXES):
        return "image"
    if lower.endswith(NPY_SUFFIXES):
        return "npy"
    return None


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def _sniff(fs: Any, path: str, url: str) -> str:
    try:
        with fs.open(path, "rb") as f:
            head = f.read(12)
    except (OSError, PermissionError) as exc:
        raise SourceError(f"{_display(url)}: cannot read file ({_one_line(exc)})") from exc
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    raise SourceError(
        f"{_display(url)}: not a Parquet, image ({IMAGE_FORMATS}) or .npy file; pass "
        f"Parquet files, image files or .npy arrays (or folders holding them)"
    )


def resolve_files(
    paths: str | Sequence[str], storage_options: Mapping[str, Any] | None = None,
    ignored: list[str] | None = None,
) -> list[tuple[str, FileInfo]]:
    """Expand files, folders, globs and URLs into ``(kind, FileInfo)`` pairs.

    Folders are searched recursively for known suffixes; explicitly named
    files of another suffix are recognized by their magic bytes. Files of
    other types met inside folders (not hidden ones) are appended to
    ``ignored`` (their paths), so that callers can report them.

    Raises
    ------
    SourceError
        For paths that do not exist, globs that match nothing, folders with no
        data files and files of an unknown type.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise SourceError("no source given; pass Parquet files, image files or folders, or .npy")
    out: dict[str, tuple[str, FileInfo]] = {}
    for raw in paths:
        raw = os.fspath(raw)
        fs, path = _fs(raw, storage_options)
        ignored_here: list[str] = []
        try:
            if any(ch in _GLOB_CHARS for ch in path):
                found = fs.glob(path, detail=True)
                if not found:
                    raise SourceError(f"{raw}: no file matches this pattern")
                candidates = []
                for p, info in sorted(found.items()):
                    if info.get("type") == "directory":
                        candidates.extend(_walk(fs, p, ignored_here))
                    else:
                        candidates.append((p, info, _kind_of_name(p)))
            elif fs.isdir(path):
                candidates = _walk(fs, path, ignored_here)
                if not candidates:
                    raise SourceError(
                        f"{raw}: this folder holds no Parquet (.parquet), image "
                        f"({', '.join(IMAGE_SUFFIXES)}) or .npy files"
                        + (f" (it holds {_ignored_text(ignored_here)})" if ignored_here else "")
                    )
            elif fs.exists(path):
                candidates = [(path, fs.info(path), _kind_of_name(path))]
            else:
                raise SourceError(f"{raw}: no such file or directory")
        except (PermissionError, OSError) as exc:
            if isinstance(exc, StreamnormError):
                raise
            raise SourceError(f"{raw}: cannot list ({_one_line(exc)})") from exc
        for p, info, kind in candidates:
            url = fs.unstrip_protocol(p)
            if kind is None:
                kind = _sniff(fs, p, url)
            out[url] = (kind, FileInfo(url, int(info.get("size") or 0), _version(info)))
        if ignored is not None:
            ignored.extend(_display(fs.unstrip_protocol(p)) for p in ignored_here)
    return [out[url] for url in sorted(out)]


def _walk(fs: Any, root: str, ignored: list[str]) -> list[tuple[str, dict[str, Any], str | None]]:
    """Data files under ``root`` (hidden ones skipped); other files go to ``ignored``."""
    found = fs.find(root, detail=True)
    result = []
    base = root.rstrip("/")
    for p, info in sorted(found.items()):
        rel = p.removeprefix(base)
        if _hidden(rel):
            continue
        kind = _kind_of_name(p)
        if kind is None:
            ignored.append(p)
            continue
        result.append((p, info, kind))
    return result


def _ignored_text(paths: Sequence[str], shown: int = 3) -> str:
    """``"2 other files: a.txt, b.csv"``: files of other types, for messages."""
    names = ", ".join(p.rsplit("/", 1)[-1] for p in paths[:shown])
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return f"{len(paths)} other file{'s' if len(paths) != 1 else ''}: {names}{more}"


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardResult:
    """What :meth:`Shard.compute` returns: a partial result for one shard.

    Attributes
    ----------
    shard_id : str
    parts : tuple of Stats
        The shard's statistics as one or more groups of features. A table's
        integer columns form their own group so that they keep their exact
        integer sums through every merge (a :class:`~streamnorm.Stats` holds
        exact sums for all of its features or for none); empty when the
        shard held no data.
    rows : int
        Rows (tables, arrays) or images read.
    nbytes : int
        Bytes of files read (compressed, as stored), for throughput.
    skipped : tuple of (str, str)
        Records skipped under ``skip_bad=True``: ``(where, reason)``.
    """

    shard_id: str
    parts: tuple[Stats, ...]
    rows: int = 0
    nbytes: int = 0
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def stats(self) -> Stats | None:
        """The shard's statistics in one value (``None`` for an empty shard)."""
        return combine_parts(self.parts) if self.parts else None


def combine_parts(parts: Sequence[Stats], order: Sequence[str] | None = None) -> Stats:
    """Feature groups side by side, in ``order`` (default: as the groups come)."""
    if len(parts) == 1 and order is None:
        return parts[0]
    layout = parts[0].layout
    combined = concat_features(parts, layout)
    if order is not None and tuple(order) != combined.feature_names:
        index = {name: i for i, name in enumerate(combined.feature_names)}
        combined = select_features(combined, [index[name] for name in order])
    return combined


def select_features(stats: Stats, indices: Sequence[int]) -> Stats:
    """The statistics of some features only (in the order given); see :meth:`Stats.select`."""
    return stats.select(indices)


def concat_features(parts: Sequence[Stats], layout: str = "NF") -> Stats:
    """Side-by-side concatenation of single- or multi-feature statistics.

    The statistics of a table are those of its columns next to each other:
    computing each column on its own lets it keep its own dtype (and its exact
    integer path) and read its Arrow buffer without a copy.

    The result's ``dtype`` is the common numpy type of the parts; exact integer
    sums are kept when every part has them (see :meth:`Stats.concat`).

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> a = sn.compute_stats([np.arange(4).reshape(4, 1)], layout="NF", feature_names=["a"])
    >>> b = sn.compute_stats([np.ones((4, 1))], layout="NF", feature_names=["b"])
    >>> s = concat_features([a, b])
    >>> s.feature_names, s.dtype, s.mean.tolist()
    (('a', 'b'), 'float64', [1.5, 1.0])
    """
    if not parts:
        raise StreamnormError("concat_features needs at least one Stats")
    if len(parts) == 1 and parts[0].layout == layout:
        return parts[0]
    dtype = common_dtype(p.dtype for p in parts)
    if all(p.histogram is not None for p in parts):
        offsets = {p.histogram_offset for p in parts}
        if len(offsets) > 1:
            raise DTypeError(
                "histograms of int8 and uint8 columns cannot share one statistics file; "
                "select columns of one 8-bit type, or drop histogram=True"
            )
        if np.dtype(dtype).itemsize != 1:
            dtype = parts[0].dtype
    return Stats.concat(parts, layout, dtype)


def _span(kind: str, start: int, stop: int) -> str:
    """``"row groups 0-2"`` for the half-open range ``[0, 3)``; ``"row group 3"``; ``"no rows"``."""
    unit = "row group" if kind == "parquet" else "row"
    if stop - start <= 0:
        return f"no {unit}s"
    if stop - start == 1:
        return f"{unit} {start}"
    return f"{unit}s {start}-{stop - 1}"


def _add_nan(stats: Stats, extra: Sequence[int]) -> Stats:
    if not any(extra):
        return stats
    return replace(stats, nan_count=stats.nan_count + np.asarray(extra, dtype=np.int64))


# ---------------------------------------------------------------------------
# shards
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadOptions:
    """How a shard's files are read; plain, picklable, JSON-safe values."""

    layout: str
    columns: tuple[str, ...] = ()
    tensor_shape: tuple[int, ...] = ()
    image_column: str | None = None
    image_mode: str = "RGB"
    batch_bytes: int = DEFAULT_BATCH_BYTES
    feature_names: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "columns": list(self.columns),
            "tensor_shape": list(self.tensor_shape),
            "image_column": self.image_column,
            "image_mode": self.image_mode,
            "batch_bytes": self.batch_bytes,
            "feature_names": None if self.feature_names is None else list(self.feature_names),
        }


@dataclass(frozen=True)
class Shard:
    """A piece of a source that can be read and reduced on its own, anywhere.

    Parameters
    ----------
    kind : {"parquet", "image", "npy"}
    files : tuple of FileInfo
        One file (Parquet, ``.npy``) or a run of image files.
    start, stop : int
        Row-group range (Parquet) or row range (``.npy``); unused for images.
    options : ReadOptions
    storage_options : dict
        Passed to fsspec wherever the shard is opened (credentials included).

    Examples
    --------
    >>> import pickle, tempfile, numpy as np
    >>> from streamnorm.sources import open_source
    >>> tmp = tempfile.TemporaryDirectory(); path = tmp.name + "/a.npy"
    >>> np.save(path, np.arange(12.0).reshape(6, 2))
    >>> shard = open_source([path]).shards[0]
    >>> pickle.loads(pickle.dumps(shard)) == shard
    True
    >>> [b.shape for b in shard.batches()]
    [(6, 2)]
    >>> tmp.cleanup()
    """

    kind: str
    files: tuple[FileInfo, ...]
    start: int
    stop: int
    options: ReadOptions
    storage_options: dict[str, Any] = field(default_factory=dict)
    nbytes: int = 0

    @property
    def id(self) -> str:
        """Stable identifier: the same data and cut give the same id in every run."""
        if self.kind == "image":
            if len(self.files) == 1:
                return f"image:{self.files[0].url}"
            digest = hashlib.sha1("\n".join(f.url for f in self.files).encode()).hexdigest()
            return f"image:{self.files[0].url}..{self.files[-1].url}#{len(self.files)}:{digest[:12]}"
        unit = "rg" if self.kind == "parquet" else "rows"
        return f"{self.kind}:{self.files[0].url}#{unit}={self.start}-{self.stop}"

    @property
    def where(self) -> str:
        """Human-readable location for messages."""
        if self.kind == "image":
            first = _display(self.files[0].url)
            return first if len(self.files) == 1 else f"{first} (+{len(self.files) - 1} images)"
        return f"{_display(self.files[0].url)} ({_span(self.kind, self.start, self.stop)})"

    def describe(self) -> dict[str, Any]:
        """JSON-safe description: id, kind, files (path, size, version), range."""
        return {
            "id": self.id,
            "kind": self.kind,
            "files": [f.describe() for f in self.files],
            "start": self.start,
            "stop": self.stop,
        }

    # -- reading -----------------------------------------------------------
    def batches(self, skip_bad: bool = False) -> Iterator[np.ndarray]:
        """Iterate the shard's batches as numpy arrays in the source's layout.

        Tables give ``(rows, features)`` arrays (column dtypes promoted to a
        common type; nulls as NaN, so a batch whose integer column has nulls
        is float64); images give one ``(1, H, W, C)`` uint8 (uint16 for 16-bit
        images) array each.
        Undecodable images raise :class:`BadRecordError` unless ``skip_bad``.
        """
        if self.kind == "parquet" and self.options.image_column is None:
            for columns in self._table_batches():
                if self.options.tensor_shape:
                    yield self._tensor_values(columns[0], policy="propagate")[0]
                else:
                    arrays = [_arrow_to_numpy(col, nulls_as_nan=True) for col in columns]
                    yield np.column_stack(arrays)
        elif self.kind == "npy":
            yield from self._npy_batches()
        else:
            for _where, image in self._images(skip_bad, skipped=[]):
                yield image[None]

    def compute(
        self,
        histogram: bool = False,
        nan_policy: str = "raise",
        skip_bad: bool = False,
        read_threads: bool = True,
        ignore_value: float | int | None = None,
    ) -> ShardResult:
        """Reduce the shard to its partial statistics.

        ``ignore_value`` is skipped wherever it occurs (a nodata value; see
        :class:`~streamnorm.StatsAccumulator`). ``read_threads`` lets pyarrow decode a row group's columns on its
        thread pool; turn it off when shards already run in parallel (one
        shard per core is cheaper than every shard on every core).

        Errors from the kernels (non-finite values, bad dtypes) are re-raised
        as the same :class:`~streamnorm.StreamnormError` subclass with the
        shard's file and range prepended.
        """
        acc_options = {"histogram": histogram, "nan_policy": nan_policy, "ignore_value": ignore_value}
        try:
            if self.kind == "parquet" and self.options.image_column is None:
                if self.options.tensor_shape:
                    return self._compute_tensor(acc_options, read_threads)
                return self._compute_table(acc_options, read_threads)
            if self.kind == "npy":
                return self._compute_npy(acc_options)
            return self._compute_images(acc_options, skip_bad)
        except (SourceError, NonFiniteError) as exc:
            if isinstance(exc, SourceError) or self.where in str(exc):
                raise
            raise _with_where(exc, self.where) from exc
        except StreamnormError as exc:
            raise _with_where(exc, self.where) from exc

    # -- Parquet -------------------------------------------------------------
    def _open_parquet(self) -> Any:
        import pyarrow.parquet as pq

        info = self.files[0]
        fs, path = _fs(info.url, self.storage_options)
        try:
            if _is_local(fs):
                # Mapped, not read: pages come straight from the page cache
                # instead of being copied into a read buffer first.
                return pq.ParquetFile(path, memory_map=True, pre_buffer=False)
            return pq.ParquetFile(fs.open(path, "rb"))
        except (OSError, ValueError) as exc:
            raise SourceError(
                f"{_display(info.url)}: not a readable Parquet file ({_one_line(exc)})"
            ) from exc

    def _table_batches(
        self, columns: Sequence[str] | None = None, read_threads: bool = True
    ) -> Iterator[list[Any]]:
        """The shard's selected columns, one list of Arrow arrays per read.

        Row groups whose selected columns decode to at most ``batch_bytes``
        are read whole (pyarrow's fastest path); larger ones in record
        batches of about ``batch_bytes``, which bounds memory.
        """
        import pyarrow as pa

        pf = self._open_parquet()
        names = list(columns if columns is not None else self.options.columns)
        # A threaded read of an in-memory buffer can abort the interpreter at
        # exit (apache/arrow #34314), so only files pyarrow opens itself use threads.
        threaded = read_threads and _is_local(_fs(self.files[0].url, self.storage_options)[0])
        wanted = set(names)
        try:
            meta = pf.metadata
            for i in range(self.start, self.stop):
                rg = meta.row_group(i)
                size = sum(rg.column(j).total_uncompressed_size for j in range(rg.num_columns)
                           if rg.column(j).path_in_schema.split(".")[0] in wanted)
                if size <= self.options.batch_bytes or rg.num_rows <= 1:
                    table = pf.read_row_group(i, columns=names, use_threads=threaded)
                    yield [_combined(table.column(k)) for k in range(table.num_columns)]
                    continue
                rows = max(1, rg.num_rows * self.options.batch_bytes // max(size, 1))
                for rb in pf.iter_batches(batch_size=rows, row_groups=[i], columns=names,
                                          use_threads=threaded):
                    yield [rb.column(k) for k in range(rb.num_columns)]
        except (OSError, ValueError, pa.ArrowException) as exc:
            if isinstance(exc, StreamnormError):
                raise
            raise SourceError(
                f"{self.where}: cannot read Parquet data ({_one_line(exc)})"
            ) from exc
        finally:
            pf.close()

    def _compute_table(self, acc_options: dict[str, Any], read_threads: bool) -> ShardResult:
        reducer = _TableReducer(self.options.columns, acc_options, self.where)
        for columns in self._table_batches(read_threads=read_threads):
            reducer.update(columns)
        return ShardResult(self.id, reducer.result(), reducer.rows, self.nbytes)

    def _tensor_values(self, col: Any, policy: str) -> tuple[np.ndarray, int]:
        """A tensor column's batch as ``(rows, *shape)`` and the null rows dropped."""
        import pyarrow as pa

        shape = self.options.tensor_shape
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if isinstance(col.type, pa.BaseExtensionType):
            col = col.storage
        dropped = 0
        valid: np.ndarray | None = None
        if col.null_count:
            if policy == "omit":
                dropped = col.null_count
                col = col.drop_null()
            else:
                valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        n_rows = len(col)
        flat = col
        while pa.types.is_fixed_size_list(flat.type):
            flat = flat.flatten()
        if flat.null_count and not pa.types.is_floating(flat.type):
            raise NonFiniteError(
                f"{self.where}: tensor column {self.options.columns[0]!r} holds null values "
                f"inside its {flat.type} tensors; fill them or cast the column to float"
            )
        values = _arrow_to_numpy(flat, nulls_as_nan=True)
        if valid is not None:
            if not np.issubdtype(values.dtype, np.floating):
                raise NonFiniteError(
                    f"{self.where}: tensor column {self.options.columns[0]!r} has "
                    f"{int((~valid).sum())} null row(s); integer statistics cannot hold a "
                    f"missing value under nan_policy={policy!r}; use nan_policy='omit'"
                )
            full = np.full((len(valid), int(np.prod(shape))), np.nan, dtype=values.dtype)
            full[valid] = values.reshape(-1, full.shape[1])
            return full.reshape((len(valid), *shape)), 0
        return values.reshape((n_rows, *shape)), dropped

    def _compute_tensor(self, acc_options: dict[str, Any], read_threads: bool) -> ShardResult:
        from .accumulate import StatsAccumulator

        nan_policy = acc_options["nan_policy"]
        acc = StatsAccumulator(layout=self.options.layout,
                               feature_names=self.options.feature_names, **acc_options)
        rows = 0
        dropped = 0
        seen = False
        for (col,) in self._table_batches(read_threads=read_threads):
            values, lost = self._tensor_values(col, nan_policy)
            rows += len(values) + lost
            dropped += lost
            if values.size or not seen:
                acc.update(values)
                seen = True
        if not seen:
            return ShardResult(self.id, (), 0, self.nbytes)
        stats = acc.result()
        if dropped:
            per_feature = int(np.prod(self.options.tensor_shape)) // max(stats.n_features, 1)
            stats = _add_nan(stats, [dropped * per_feature] * stats.n_features)
        return ShardResult(self.id, (stats,), rows, self.nbytes)

    # -- images -------------------------------------------------------------
    def _images(
        self, skip_bad: bool, skipped: list[tuple[str, str]]
    ) -> Iterator[tuple[str, np.ndarray]]:
        if self.kind == "parquet":
            yield from self._column_images(skip_bad, skipped)
            return
        fs, _ = _fs(self.files[0].url, self.storage_options)  # one filesystem per shard
        for info in self.files:
            where = _display(info.url)
            try:
                with fs.open(fs._strip_protocol(info.url), "rb") as f:
                    data = f.read()
            except (OSError, PermissionError) as exc:
                if isinstance(exc, StreamnormError):
                    raise
                raise SourceError(f"{where}: cannot read file ({_one_line(exc)})") from exc
            try:
                yield where, decode_image(data, self.options.image_mode, where)
            except BadRecordError as exc:
                if not skip_bad:
                    raise
                skipped.append((exc.where, exc.reason))

    def _column_images(
        self, skip_bad: bool, skipped: list[tuple[str, str]]
    ) -> Iterator[tuple[str, np.ndarray]]:
        import pyarrow as pa

        column = self.options.image_column
        assert column is not None
        pf = self._open_parquet()
        first_row = sum(pf.metadata.row_group(i).num_rows for i in range(self.start))
        pf.close()
        row = first_row
        for (col,) in self._table_batches([column]):
            if pa.types.is_struct(col.type):
                col = col.field("bytes")
            for value in col.to_pylist():
                where = f"{_display(self.files[0].url)} row {row}"
                row += 1
                try:
                    if value is None:
                        raise BadRecordError(where, "the image value is null")
                    yield where, decode_image(value, self.options.image_mode, where)
                except BadRecordError as exc:
                    if not skip_bad:
                        raise
                    skipped.append((exc.where, exc.reason))

    def _compute_images(self, acc_options: dict[str, Any], skip_bad: bool) -> ShardResult:
        from .accumulate import StatsAccumulator

        acc = StatsAccumulator(layout="NHWC", feature_names=self.options.feature_names, **acc_options)
        skipped: list[tuple[str, str]] = []
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
        for where, image in self._images(skip_bad, skipped):
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
        parts = (acc.result(),) if n else ()
        return ShardResult(self.id, parts, n, self.nbytes, tuple(skipped))

    # -- .npy ---------------------------------------------------------------
    def _npy_batches(self) -> Iterator[np.ndarray]:
        info = self.files[0]
        fs, path = _fs(info.url, self.storage_options)
        header = _npy_header(fs, path, info.url)
        shape, dtype, fortran, offset = header
        if parse_layout(self.options.layout).feature_axis == 0:
            # Cutting along the feature axis would split features: one piece.
            yield _npy_local(path, info.url) if _is_local(fs) else _npy_read_all(fs, path, header)
            return
        row_bytes = max(int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize, 1)
        step = max(1, self.options.batch_bytes // row_bytes)
        if _is_local(fs) or fortran:
            array = _npy_local(path, info.url) if _is_local(fs) else _npy_read_all(fs, path, header)
            for lo in range(self.start, self.stop, step):
                yield array[lo:min(lo + step, self.stop)]
            return
        with fs.open(path, "rb") as f:
            for lo in range(self.start, self.stop, step):
                hi = min(lo + step, self.stop)
                f.seek(offset + lo * row_bytes)
                buf = f.read((hi - lo) * row_bytes)
                yield np.frombuffer(buf, dtype=dtype).reshape((hi - lo, *shape[1:]))

    def _compute_npy(self, acc_options: dict[str, Any]) -> ShardResult:
        from .accumulate import StatsAccumulator

        acc = StatsAccumulator(layout=self.options.layout,
                               feature_names=self.options.feature_names, **acc_options)
        rows = 0
        for chunk in self._npy_batches():
            acc.update(chunk)
            rows += chunk.shape[0]
        return ShardResult(self.id, (acc.result(),), rows, self.nbytes)


class _TableReducer:
    """Per-column statistics of a table's batches, one accumulator per dtype.

    Columns of one dtype are stacked into a ``(features, rows)`` buffer and
    reduced in one call (layout ``"FN"``): one kernel call per dtype and batch
    instead of one per column, and a single column is handed over without a
    copy. Each dtype keeps its own statistics, so integer columns keep their
    exact sums whatever the other columns hold. Integer columns with nulls
    (``nan_policy="omit"``) are ragged for that batch: their values are reduced
    column by column and merged exactly.
    """

    def __init__(self, names: Sequence[str], acc_options: dict[str, Any], where: str) -> None:
        self.names = tuple(names)
        self.acc_options = acc_options
        self.histogram = acc_options["histogram"]
        self.nan_policy = acc_options["nan_policy"]
        self.where = where
        self.rows = 0
        self.groups: dict[np.dtype, list[int]] | None = None
        self.accs: dict[np.dtype, Any] = {}
        self.extra: dict[np.dtype, list[Stats]] = {}
        self.nulls = np.zeros(len(self.names), np.int64)
        self._buffers: dict[np.dtype, np.ndarray] = {}

    def _values(self, j: int, col: Any) -> tuple[np.ndarray, bool]:
        """Column ``j`` as numpy; ``True`` when nulls were dropped (ragged)."""
        import pyarrow as pa

        if col.null_count and not pa.types.is_floating(col.type):
            if self.nan_policy != "omit":
                raise NonFiniteError(
                    f"{self.where}: column {self.names[j]!r} ({col.type}) has "
                    f"{col.null_count} null(s); integer statistics are exact and cannot hold a "
                    f"missing value under nan_policy={self.nan_policy!r}; use "
                    f"nan_policy='omit' to skip and count them, or cast the column to float"
                )
            self.nulls[j] += col.null_count
            return _arrow_to_numpy(col.drop_null(), nulls_as_nan=False), True
        return _arrow_to_numpy(col, nulls_as_nan=True), False

    def _accumulator(self, dtype: np.dtype) -> Any:
        from .accumulate import StatsAccumulator

        assert self.groups is not None
        names = [self.names[j] for j in self.groups[dtype]]
        return StatsAccumulator(layout="FN", feature_names=names, **self.acc_options)

    def update(self, columns: Sequence[Any]) -> None:
        n = len(columns[0]) if columns else 0
        self.rows += n
        if n == 0:
            return
        converted = [self._values(j, col) for j, col in enumerate(columns)]
        if self.groups is None:
            self.groups = {}
            for j, (values, _ragged) in enumerate(converted):
                self.groups.setdefault(values.dtype, []).append(j)
            for dtype in self.groups:
                self.accs[dtype] = self._accumulator(dtype)
                self.extra[dtype] = []
        for dtype, members in self.groups.items():
            arrays = [converted[j][0] for j in members]
            arrays = [a if a.dtype == dtype else a.astype(dtype) for a in arrays]
            if any(converted[j][1] for j in members):
                parts = [self._single(self.names[j], a) for j, a in zip(members, arrays)]
                self.extra[dtype].append(concat_features(parts, "FN"))
                continue
            if len(arrays) == 1:
                stacked = arrays[0].reshape(1, -1)
            else:
                buf = self._buffers.get(dtype)
                if buf is None or buf.shape != (len(arrays), n):
                    buf = self._buffers[dtype] = np.empty((len(arrays), n), dtype)
                for row, a in enumerate(arrays):
                    buf[row] = a
                stacked = buf
            self.accs[dtype].update(stacked)

    def _single(self, name: str, values: np.ndarray) -> Stats:
        from .accumulate import StatsAccumulator

        acc = StatsAccumulator(layout="FN", feature_names=[name], **self.acc_options)
        return acc.update(values.reshape(1, -1)).result()

    def result(self) -> tuple[Stats, ...]:
        """One :class:`Stats` per dtype group (layout ``"NF"``); empty without rows."""
        if self.groups is None:
            return ()
        parts = []
        for dtype, members in self.groups.items():
            acc = self.accs[dtype]
            pieces = ([acc.result()] if acc.n_batches else []) + self.extra[dtype]
            stats = Stats.merge_all(pieces)
            stats = replace(stats, layout="NF", nan_count=stats.nan_count + self.nulls[members])
            parts.append(stats)
        return tuple(parts)


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


def _with_where(exc: StreamnormError, where: str) -> StreamnormError:
    try:
        new = type(exc)(f"{where}: {exc}")
    except TypeError:
        new = StreamnormError(f"{where}: {exc}")
    return new


def _combined(col: Any) -> Any:
    """One Arrow array for a (usually single-chunk) column."""
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _arrow_to_numpy(col: Any, nulls_as_nan: bool) -> np.ndarray:
    """Arrow array -> numpy, zero-copy for null-free fixed-width numeric data."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    typ = col.type
    if col.null_count == 0 and (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
        return col.to_numpy(zero_copy_only=True)
    if pa.types.is_boolean(typ):
        if col.null_count:
            return col.to_numpy(zero_copy_only=False).astype(np.float64)
        return col.to_numpy(zero_copy_only=False).astype(bool)
    values = col.to_numpy(zero_copy_only=False)
    if pa.types.is_floating(typ):
        return values.astype(typ.to_pandas_dtype(), copy=False)
    return values


# -- images -------------------------------------------------------------------

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
    from ._png import PngError, decode_png16

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

    from ._png import png_info

    if mode not in IMAGE_MODES:
        raise StreamnormError(f"image_mode must be one of {IMAGE_MODES}, got {mode!r}")
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
        raise BadRecordError(where, _one_line(exc)) from exc
    if array.ndim == 2:
        array = array[:, :, None]
    return array


# -- .npy ---------------------------------------------------------------------


def _is_local(fs: Any) -> bool:
    from .fsutil import is_local

    return is_local(fs)


def _npy_local(path: str, url: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise SourceError(f"{_display(url)}: not a numeric .npy array ({_one_line(exc)})") from exc
    except OSError as exc:
        raise SourceError(f"{_display(url)}: cannot read .npy file ({_one_line(exc)})") from exc
    if not isinstance(array, np.ndarray):
        raise SourceError(f"{_display(url)}: holds no array (an .npz archive?)")
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
        raise SourceError(f"{_display(url)}: not a readable .npy file ({_one_line(exc)})") from exc
    if dtype.hasobject or dtype.kind not in "biuf":
        raise SourceError(
            f"{_display(url)}: holds dtype {dtype}; only bool, integer and float arrays have "
            f"statistics (object arrays are never unpickled)"
        )
    return tuple(int(s) for s in shape), dtype, bool(fortran), int(offset)


def _npy_read_all(fs: Any, path: str, header: tuple[Any, ...]) -> np.ndarray:
    shape, dtype, fortran, offset = header
    with fs.open(path, "rb") as f:
        f.seek(offset)
        buf = f.read(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")


# ---------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A resolved source: its kind, layout, feature names and shards.

    Build one with :func:`open_source`. ``describe()`` is a JSON-safe summary
    used to recognize the same run (e.g. by checkpoints).
    """

    kind: str
    layout: str
    feature_names: tuple[str, ...] | None
    shards: tuple[Shard, ...]
    options: ReadOptions
    storage_options: dict[str, Any] = field(default_factory=dict)
    #: Files of other types found in the folders given, which are not read.
    ignored_files: tuple[str, ...] = ()
    #: Parquet columns left out because they are not numeric: ``"name (type)"``.
    ignored_columns: tuple[str, ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shards)

    @property
    def unit(self) -> str:
        """What :attr:`ShardResult.rows` counts: ``"rows"`` or ``"images"``."""
        return "images" if self.kind == "image" or self.options.image_column else "rows"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layout": self.layout,
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "options": self.options.as_dict(),
            "shards": [s.describe() for s in self.shards],
        }


def open_source(
    paths: str | Sequence[str],
    *,
    layout: str | None = None,
    columns: Sequence[str] | None = None,
    image_column: str | None = None,
    image_mode: str = "RGB",
    storage_options: Mapping[str, Any] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> Source:
    """Resolve paths into a :class:`Source` of shards.

    Parameters
    ----------
    paths : str or sequence of str
        Files, folders (searched recursively), globs or fsspec URLs, all of
        one kind: Parquet, images (PNG, JPEG, BMP, GIF, WebP, TIFF) or ``.npy``.
    layout : str, optional
        What the data holds. Parquet numeric columns are always ``"NF"``;
        images ``"NHWC"``; ``.npy`` defaults to ``"N"`` (1-D) / ``"NF"`` (2-D)
        and needs it for higher ranks; a Parquet tensor column needs it
        beyond one dimension.
    columns : sequence of str, optional
        Parquet columns to reduce. Default: every integer and float column.
    image_column : str, optional
        Parquet column of encoded images (binary, or a struct with a ``bytes``
        field) -> ``NHWC`` uint8, or uint16 for 16-bit images.
    image_mode : {"RGB", "L"}
        Colour handling of decoded images (see the module notes).
    storage_options : mapping, optional
        fsspec options (credentials, endpoint...), carried by every shard.
    shard_bytes : int
        Target compressed size of a Parquet shard (whole row groups).
    images_per_shard : int
        Image files per shard.
    batch_bytes : int
        Decoded bytes read at once: Parquet row groups up to this size are
        read whole (pyarrow's fastest path), larger ones in record batches of
        about this size; ``.npy`` files in chunks of this size. Bounds the
        memory of one reader (about twice this per worker).

    Raises
    ------
    SourceError
        Missing paths, mixed or unknown file kinds, unreadable or non-Parquet
        files, missing or non-numeric columns.
    LayoutError
        A layout that does not fit the data.
    """
    so = dict(storage_options or {})
    if image_mode not in IMAGE_MODES:
        raise StreamnormError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
    for name, value in (("shard_bytes", shard_bytes), ("images_per_shard", images_per_shard),
                        ("batch_bytes", batch_bytes)):
        if not isinstance(value, int) or value < 1:
            raise StreamnormError(f"{name} must be a positive integer, got {value!r}")
    if layout is not None:
        parse_layout(layout)
    ignored: list[str] = []
    files = resolve_files(paths, so, ignored)
    source = _open_files(files, layout, columns, image_column, image_mode, so, shard_bytes,
                         images_per_shard, batch_bytes)
    return replace(source, ignored_files=tuple(ignored))


def _open_files(
    files: list[tuple[str, FileInfo]], layout: str | None, columns: Sequence[str] | None,
    image_column: str | None, image_mode: str, so: dict[str, Any], shard_bytes: int,
    images_per_shard: int, batch_bytes: int,
) -> Source:
    kinds = sorted({k for k, _ in files})
    if len(kinds) > 1:
        examples = {k: _display(f.url) for k, f in files}
        raise SourceError(
            "the sources mix " + " and ".join(f"{k} files (e.g. {examples[k]})" for k in kinds)
            + "; compute one kind at a time"
        )
    kind = kinds[0]
    infos = [f for _, f in files]
    if kind != "parquet" and (columns or image_column):
        raise SourceError(
            f"--columns/--image-column apply to Parquet files, but the sources are {kind} "
            f"files (e.g. {_display(infos[0].url)})"
        )
    if kind == "parquet":
        return _open_parquet_source(infos, layout, columns, image_column, image_mode, so,
                                    shard_bytes, batch_bytes)
    if kind == "image":
        if layout not in (None, "NHWC"):
            raise LayoutError(f"images are read as 'NHWC'; drop --layout {layout!r}")
        options = ReadOptions(layout="NHWC", image_mode=image_mode, batch_bytes=batch_bytes)
        shards = tuple(
            Shard("image", tuple(infos[i:i + images_per_shard]), 0, 0, options, so,
                  sum(f.size for f in infos[i:i + images_per_shard]))
            for i in range(0, len(infos), images_per_shard)
        )
        return Source("image", "NHWC", None, shards, options, so)
    return _open_npy_source(infos, layout, so, batch_bytes)


def _numeric(typ: Any, allow_bool: bool) -> bool:
    import pyarrow as pa

    return (pa.types.is_integer(typ) or pa.types.is_floating(typ)
            or (allow_bool and pa.types.is_boolean(typ)))


def _tensor_shape(typ: Any) -> tuple[tuple[int, ...], Any] | None:
    """Shape and value type of a fixed-size-list / fixed_shape_tensor column type."""
    import pyarrow as pa

    if isinstance(typ, pa.BaseExtensionType):
        if getattr(typ, "extension_name", "") == "arrow.fixed_shape_tensor":
            perm = typ.permutation
            if perm is not None and list(perm) != sorted(perm):
                return None
            return tuple(int(s) for s in typ.shape), typ.value_type
        typ = typ.storage_type
    shape: list[int] = []
    while pa.types.is_fixed_size_list(typ):
        shape.append(int(typ.list_size))
        typ = typ.value_type
    if not shape:
        return None
    return tuple(shape), typ


def _read_footer(info: FileInfo, so: Mapping[str, Any]) -> Any:
    import pyarrow.parquet as pq

    fs, path = _fs(info.url, so)
    try:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata
    except PermissionError as exc:
        raise SourceError(f"{_display(info.url)}: cannot read file ({_one_line(exc)})") from exc
    except (OSError, ValueError) as exc:
        raise SourceError(
            f"{_display(info.url)}: not a readable Parquet file ({_one_line(exc)})"
        ) from exc


def _open_parquet_source(
    infos: list[FileInfo],
    layout: str | None,
    columns: Sequence[str] | None,
    image_column: str | None,
    image_mode: str,
    so: dict[str, Any],
    shard_bytes: int,
    batch_bytes: int,
) -> Source:
    import pyarrow as pa

    metas = [_read_footer(info, so) for info in infos]
    first_schema = metas[0].schema.to_arrow_schema()
    tensor_shape: tuple[int, ...] = ()
    feature_names: tuple[str, ...] | None
    if image_column is not None:
        if columns:
            raise SourceError("pass either columns or an image column, not both")
        if layout not in (None, "NHWC"):
            raise LayoutError(f"an image column is read as 'NHWC'; drop --layout {layout!r}")
        selected: tuple[str, ...] = (image_column,)
        out_layout = "NHWC"
        feature_names = None
    else:
        if columns:
            selected = tuple(columns)
        else:
            selected = tuple(f.name for f in first_schema if _numeric(f.type, False))
            if not selected:
                tensors = [f.name for f in first_schema if _tensor_shape(f.type)]
                described = ", ".join(f"{f.name}: {f.type}" for f in first_schema)
                hint = (f"pass the tensor column with --columns {tensors[0]}" if tensors
                        else "pass --image-column for encoded images")
                raise SourceError(
                    f"{_display(infos[0].url)}: no numeric columns (columns: {described}); {hint}"
                )
        if len(set(selected)) != len(selected):
            raise SourceError(f"columns are repeated: {list(selected)}")
        out_layout, feature_names = "NF", selected
    for info, meta in zip(infos, metas):
        schema = meta.schema.to_arrow_schema()
        for name in selected:
            idx = schema.get_field_index(name)
            if idx < 0:
                raise SourceError(
                    f"{_display(info.url)}: has no column {name!r} (columns: {schema.names})"
                )
            typ = schema.field(idx).type
            if image_column is not None:
                ok = (pa.types.is_binary(typ) or pa.types.is_large_binary(typ)
                      or (pa.types.is_struct(typ) and typ.get_field_index("bytes") >= 0))
                if not ok:
                    raise SourceError(
                        f"{_display(info.url)}: image column {name!r} has type {typ}; it must "
                        f"hold encoded image bytes (binary, or a struct with a 'bytes' field)"
                    )
                continue
            tensor = _tensor_shape(typ)
            if tensor is not None:
                if len(selected) > 1:
                    raise SourceError(
                        f"{_display(info.url)}: column {name!r} holds tensors ({typ}); select it "
                        f"on its own (--columns {name}), not with other columns"
                    )
                shape, value_type = tensor
                if not _numeric(value_type, True):
                    raise SourceError(
                        f"{_display(info.url)}: tensor column {name!r} holds {value_type}, "
                        f"which is not numeric"
                    )
                if tensor_shape and shape != tensor_shape:
                    raise SourceError(
                        f"{_display(info.url)}: tensor column {name!r} has shape {shape}, "
                        f"other files {tensor_shape}"
                    )
                tensor_shape = shape
            elif not _numeric(typ, True):
                raise SourceError(
                    f"{_display(info.url)}: column {name!r} has type {typ}, which is not numeric; "
                    f"pick integer or float columns with --columns"
                )
            elif tensor_shape:
                raise SourceError(f"{_display(info.url)}: column {name!r} is not a tensor column")
    if tensor_shape:
        if layout is None:
            if len(tensor_shape) != 1:
                raise LayoutError(
                    f"column {selected[0]!r} holds {len(tensor_shape)}-D tensors of shape "
                    f"{tensor_shape}; pass the layout of a batch of them (e.g. 'NCHW' or 'NHWC')"
                )
            layout = "NF"
        parsed = parse_layout(layout)
        parsed.check_rank(1 + len(tensor_shape), what=f"a batch of column {selected[0]!r}")
        out_layout = layout
        if layout == "NF":
            feature_names = tuple(f"{selected[0]}[{i}]" for i in range(tensor_shape[0]))
        else:
            feature_names = None
    elif image_column is None and layout not in (None, "NF"):
        raise LayoutError(
            f"numeric Parquet columns are read as 'NF' (one feature per column); "
            f"drop --layout {layout!r}"
        )
    ignored_columns = () if (columns or image_column is not None) else tuple(
        f"{f.name} ({f.type})" for f in first_schema if not _numeric(f.type, False))
    options = ReadOptions(layout=out_layout, columns=selected, tensor_shape=tensor_shape,
                          image_column=image_column, image_mode=image_mode,
                          batch_bytes=batch_bytes,
                          feature_names=feature_names if tensor_shape else None)
    shards: list[Shard] = []
    for info, meta in zip(infos, metas):
        start, size = 0, 0
        sizes = [
            sum(meta.row_group(i).column(j).total_compressed_size
                for j in range(meta.row_group(i).num_columns))
            for i in range(meta.num_row_groups)
        ]
        for i, rg_size in enumerate(sizes):
            size += rg_size
            if size >= shard_bytes or i == len(sizes) - 1:
                shards.append(Shard("parquet", (info,), start, i + 1, options, so, size))
                start, size = i + 1, 0
    return Source("parquet", out_layout, feature_names, tuple(shards), options, so,
                  ignored_columns=ignored_columns)


def _open_npy_source(
    infos: list[FileInfo], layout: str | None, so: dict[str, Any], batch_bytes: int
) -> Source:
    headers = []
    for info in infos:
        fs, path = _fs(info.url, so)
        header = _npy_header(fs, path, info.url)
        if not header[0]:
            raise SourceError(f"{_display(info.url)}: holds a scalar, not an array of samples")
        headers.append(header)
    if layout is None:
        shape = headers[0][0]
        if len(shape) > 2:
            raise LayoutError(
                f"{_display(infos[0].url)} holds a {len(shape)}-D array of shape {shape}; "
                f"pass --layout to say what it holds (e.g. 'NCHW' or 'NHWC')"
            )
        layout = "NF" if len(shape) == 2 else "N"
    parsed = parse_layout(layout)
    features = set()
    for info, (shape, _dtype, _fortran, _offset) in zip(infos, headers):
        parsed.check_rank(len(shape), what=f"{_display(info.url)} (shape {shape})")
        if parsed.feature_axis is not None:
            features.add(shape[parsed.feature_axis])
    if len(features) > 1:
        raise SourceError(
            "the .npy files disagree on their number of features: "
            + ", ".join(f"{_display(i.url)} {h[0]}" for i, h in zip(infos, headers))
        )
    options = ReadOptions(layout=layout, batch_bytes=batch_bytes)
    shards = []
    for info, (shape, dtype, _fortran, _offset) in zip(infos, headers):
        n = shape[0]
        if parsed.feature_axis == 0:
            shards.append(Shard("npy", (info,), 0, n, options, so, info.size))
            continue
        row_bytes = max(int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize, 1)
        rows_per_shard = max(1, DEFAULT_SHARD_BYTES // row_bytes)
        for lo in range(0, max(n, 1), rows_per_shard):
            hi = min(n, lo + rows_per_shard)
            shards.append(Shard("npy", (info,), lo, hi, options, so, (hi - lo) * row_bytes))
    return Source("npy", layout, None, tuple(shards), options, so)


def shard_digest(shard_id: str) -> str:
    """``sha1`` hex digest of a shard id (checkpoint split names)."""
    return hashlib.sha1(shard_id.encode("utf-8")).hexdigest()
