"""The source protocol: files, shards, partial results and the :class:`Format` interface.

Every input format is one :class:`Format` (a module of this package) that

1. *opens* the files recognized as its own into a :class:`Source` (layout,
   feature names, read options),
2. *describes* what a checkpoint must match (:meth:`Source.describe`, from the
   files, the read options and the cut),
3. *cuts* them into :class:`Shard` objects (small, picklable values), and
4. *reads* a shard's batches, or *reduces* it to a :class:`ShardResult`.

:class:`Shard` and :class:`Source` are format-agnostic values: they name their
format by ``kind`` and hand every format-specific question to it, so the
engine, the checkpoint, the progress bar and the CLI never branch on a kind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from ..errors import DTypeError, NonFiniteError, StreamnormError
from ..stats import Stats, common_dtype

#: Default size of one Parquet shard (compressed bytes of whole row groups).
DEFAULT_SHARD_BYTES = 64 * 2**20
#: Default number of image files per shard.
DEFAULT_IMAGES_PER_SHARD = 256
#: Default bytes of decoded data read at once (whole Parquet row groups up to this).
DEFAULT_BATCH_BYTES = 64 * 2**20


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
# small helpers shared by the formats
# ---------------------------------------------------------------------------


def fs_of(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """``(filesystem, path)`` of a URL (fsspec), with the storage options."""
    from ..fsutil import resolve_url

    return resolve_url(url, storage_options)


def is_local(fs: Any) -> bool:
    """Whether ``fs`` is the local filesystem (files can be memory-mapped)."""
    from ..fsutil import is_local as local

    return local(fs)


def display(url: str) -> str:
    """A URL as shown in messages (local paths without ``file://``)."""
    return url.removeprefix("file://")


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (its type's name when it has none)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def with_where(exc: StreamnormError, where: str) -> StreamnormError:
    """The same kind of error with ``where`` prepended to its message."""
    try:
        new = type(exc)(f"{where}: {exc}")
    except TypeError:
        new = StreamnormError(f"{where}: {exc}")
    return new


def add_nan(stats: Stats, extra: Sequence[int]) -> Stats:
    """``stats`` with ``extra`` more non-finite values per feature."""
    if not any(extra):
        return stats
    return replace(stats, nan_count=stats.nan_count + np.asarray(extra, dtype=np.int64))


def json_number(value: float) -> float | str:
    """A float as JSON holds it: NaN and infinities as strings."""
    return value if np.isfinite(value) else str(value)


def shard_digest(shard_id: str) -> str:
    """``sha1`` hex digest of a shard id (checkpoint split names)."""
    return hashlib.sha1(shard_id.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------
# files and options
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
    #: The array or dataset read inside a Zarr store or HDF5 file (``--array``).
    array: str | None = None
    #: WebDataset: the member of each sample that is read (``"jpg"``, ``"npy"``; ``None``: its image).
    key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        extra = {} if self.array is None else {"array": self.array}
        return {**extra,
            "layout": self.layout,
            "columns": list(self.columns),
            "tensor_shape": list(self.tensor_shape),
            "image_column": self.image_column,
            "image_mode": self.image_mode,
            "batch_bytes": self.batch_bytes,
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            # only when set: descriptions (and so checkpoints) of other formats stay as they were
            **({} if self.key is None else {"key": self.key}),
        }


@dataclass(frozen=True)
class OpenRequest:
    """What the user asked :func:`~streamnorm.sources.open_source` for, handed to a format."""

    layout: str | None = None
    columns: tuple[str, ...] | None = None
    image_column: str | None = None
    image_mode: str = "RGB"
    storage_options: dict[str, Any] = field(default_factory=dict)
    shard_bytes: int = DEFAULT_SHARD_BYTES
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD
    batch_bytes: int = DEFAULT_BATCH_BYTES
    array: str | None = None
    key: str | None = None


def reject_table_options(kind: str, files: Sequence[FileInfo], request: OpenRequest) -> None:
    """Refuse ``columns``/``image_column`` for a format that has no columns."""
    if request.columns or request.image_column:
        raise SourceError(
            f"--columns/--image-column apply to Parquet files, but the sources are {kind} "
            f"files (e.g. {display(files[0].url)})"
        )


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


# ---------------------------------------------------------------------------
# the protocol
# ---------------------------------------------------------------------------


class Format:
    """One input format: how it is recognized, opened, cut, read and reduced.

    Subclasses set the class attributes and implement :meth:`open`,
    :meth:`batches` and :meth:`reduce`; the others have defaults. Register an
    instance with :func:`streamnorm.sources.registry.register`.

    Attributes
    ----------
    kind : str
        Name in shard ids, descriptions and messages (``"parquet"``).
    suffixes : tuple of str
        File name endings (lower case) that are this format's, also inside folders.
    magic : tuple of bytes
        Prefixes of a file's first bytes that are this format's (for files
        named explicitly with another suffix).
    noun, folder_noun, plural : str
        Wording of messages: ``"not a <noun> file"``, ``"this folder holds no
        <folder_noun> files"``, ``"pass <plural>"``.
    """

    kind: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    magic: ClassVar[tuple[bytes, ...]] = ()
    noun: ClassVar[str] = ""
    folder_noun: ClassVar[str] = ""
    plural: ClassVar[str] = ""
    #: Whether a file holds several arrays, one of which ``array=`` (``--array``) picks.
    takes_array: ClassVar[bool] = False

    # -- recognizing -------------------------------------------------------
    #: Folder name endings of stores that are one input (``".zarr"``), never walked into.
    folder_suffixes: ClassVar[tuple[str, ...]] = ()

    def claims_folder(self, fs: Any, path: str) -> bool:
        """Whether the folder ``path`` is one input of this format (a Zarr store)."""
        return False

    def sniff(self, head: bytes) -> bool:
        """Whether a file starting with ``head`` (12 bytes) is of this format."""
        return head.startswith(self.magic) if self.magic else False

    # -- opening and cutting -----------------------------------------------
    def open(self, files: Sequence[FileInfo], request: OpenRequest) -> Source:
        """Read what is needed of ``files`` (headers, footers) and cut them into shards."""
        raise NotImplementedError

    # -- describing --------------------------------------------------------
    def shard_id(self, shard: Shard) -> str:
        """Stable id: the same data and cut give the same id in every run."""
        return f"{shard.kind}:{shard.files[0].url}#{self.unit_short}={shard.start}-{shard.stop}"

    def where(self, shard: Shard) -> str:
        """Human-readable location of a shard, for messages."""
        return f"{display(shard.files[0].url)} ({self.span(shard.start, shard.stop)})"

    unit_short: ClassVar[str] = "rows"
    range_unit: ClassVar[str] = "row"
    #: Whether the format reads ``key=`` (``--key``: which member of a sample).
    uses_key: ClassVar[bool] = False

    def span(self, start: int, stop: int) -> str:
        """``"rows 0-2"`` for the half-open range ``[0, 3)``; ``"row 3"``; ``"no rows"``."""
        unit = self.range_unit
        if stop - start <= 0:
            return f"no {unit}s"
        if stop - start == 1:
            return f"{unit} {start}"
        return f"{unit}s {start}-{stop - 1}"

    def unit(self, options: ReadOptions) -> str:
        """What :attr:`ShardResult.rows` counts: ``"rows"`` or ``"images"``."""
        return "rows"

    def decodes(self, options: ReadOptions) -> bool:
        """Whether reading decodes images (their pixels, hence the statistics, depend on the decoder)."""
        return False

    def holds_gil(self, source: Source) -> bool:
        """Whether reading ``source`` holds the GIL most of the time (default: :meth:`decodes`).

        The local engine runs the shards of such a source in processes, and
        the others on threads of the calling process.
        """
        return self.decodes(source.options)

    # -- reading -----------------------------------------------------------
    def batches(self, shard: Shard, skip_bad: bool) -> Iterator[np.ndarray]:
        """The shard's batches as numpy arrays in the source's layout."""
        raise NotImplementedError

    def reduce(self, shard: Shard, histogram: bool, nan_policy: str, skip_bad: bool,
               read_threads: bool, ignore_value: float | int | None = None) -> ShardResult:
        """The shard's partial statistics (``ignore_value``: see :class:`~streamnorm.StatsAccumulator`)."""
        raise NotImplementedError

    def check(self, source: Source, results: Mapping[str, ShardResult]) -> None:
        """Refuse partials that cannot be merged into one meaningful result (default: none)."""


def _format(kind: str) -> Format:
    from .registry import get_format

    return get_format(kind)


@dataclass(frozen=True)
class Shard:
    """A piece of a source that can be read and reduced on its own, anywhere.

    Parameters
    ----------
    kind : str
        Its format (``"parquet"``, ``"image"``, ``"npy"``...).
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
    def format(self) -> Format:
        return _format(self.kind)

    @property
    def id(self) -> str:
        """Stable identifier: the same data and cut give the same id in every run."""
        return self.format.shard_id(self)

    @property
    def where(self) -> str:
        """Human-readable location for messages."""
        return self.format.where(self)

    def describe(self) -> dict[str, Any]:
        """JSON-safe description: id, kind, files (path, size, version), range."""
        return {
            "id": self.id,
            "kind": self.kind,
            "files": [f.describe() for f in self.files],
            "start": self.start,
            "stop": self.stop,
        }

    def batches(self, skip_bad: bool = False) -> Iterator[np.ndarray]:
        """Iterate the shard's batches as numpy arrays in the source's layout.

        Tables give ``(rows, features)`` arrays (column dtypes promoted to a
        common type; nulls as NaN, so a batch whose integer column has nulls
        is float64); images give one ``(1, H, W, C)`` uint8 (uint16 for 16-bit
        images) array each.
        Undecodable images raise :class:`BadRecordError` unless ``skip_bad``.
        """
        return self.format.batches(self, skip_bad)

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
        :class:`~streamnorm.StatsAccumulator`).
        ``read_threads`` lets pyarrow decode a row group's columns on its
        thread pool; turn it off when shards already run in parallel (one
        shard per core is cheaper than every shard on every core).

        Errors from the kernels (non-finite values, bad dtypes) are re-raised
        as the same :class:`~streamnorm.StreamnormError` subclass with the
        shard's file and range prepended.
        """
        try:
            return self.format.reduce(self, histogram, nan_policy, skip_bad, read_threads,
                                      ignore_value=ignore_value)
        except (SourceError, NonFiniteError) as exc:
            if isinstance(exc, SourceError) or self.where in str(exc):
                raise
            raise with_where(exc, self.where) from exc
        except StreamnormError as exc:
            raise with_where(exc, self.where) from exc


@dataclass(frozen=True)
class Source:
    """A resolved source: its kind, layout, feature names and shards.

    Build one with :func:`~streamnorm.sources.open_source`. ``describe()`` is
    a JSON-safe summary used to recognize the same run (e.g. by checkpoints).
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
    #: A declared missing-data value (``_FillValue``, ``nodata``, ``missing_value``) and the
    #: attribute that declares it, or ``None``.
    nodata: float | None = None
    nodata_attribute: str | None = None

    @property
    def skipped_value(self) -> float | None:
        """The declared missing-data value that is skipped by default (a NaN one follows ``nan_policy``)."""
        return None if self.nodata is None or self.nodata != self.nodata else self.nodata

    @property
    def format(self) -> Format:
        return _format(self.kind)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shards)

    @property
    def unit(self) -> str:
        """What :attr:`ShardResult.rows` counts: ``"rows"`` or ``"images"``."""
        return self.format.unit(self.options)

    @property
    def decodes(self) -> bool:
        """Whether reading decodes images: the stored statistics then name the decoder."""
        return self.format.decodes(self.options)

    @property
    def holds_gil(self) -> bool:
        """Whether reading holds the GIL most of the time: shards then run in processes."""
        return self.format.holds_gil(self)

    def check(self, results: Mapping[str, ShardResult]) -> None:
        """Refuse shard results that cannot be merged (e.g. images of two bit depths)."""
        self.format.check(self, results)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layout": self.layout,
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "options": self.options.as_dict(),
            "shards": [s.describe() for s in self.shards],
            **({} if self.nodata is None else {"nodata": json_number(self.nodata),
                                               "nodata_attribute": self.nodata_attribute}),
        }
