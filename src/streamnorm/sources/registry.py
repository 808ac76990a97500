"""Which format a file is (by suffix, or by its first bytes) and :func:`open_source`.

The formats are registered here, in the order they are tried; adding one is
one module with a :class:`~streamnorm.sources.base.Format` subclass and one
:func:`register` call. Files, folders, globs and fsspec URLs are resolved
once into ``(kind, FileInfo)`` pairs; all of one kind are handed to that
kind's :meth:`~streamnorm.sources.base.Format.open`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..errors import StreamnormError
from ..layout import parse_layout
from ._braces import expand_braces
from ._decode import check_image_mode
from .arrays import Hdf5Format, ZarrFormat
from .base import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_IMAGES_PER_SHARD,
    DEFAULT_SHARD_BYTES,
    FileInfo,
    Format,
    OpenRequest,
    Source,
    SourceError,
    display,
    fs_of,
    one_line,
)
from .h5ad import H5adFormat
from .hf import HFDatasetFormat
from .images import ImageFormat
from .npy import NpyFormat
from .parquet import ParquetFormat
from .webdataset import WebDatasetFormat

_FORMATS: dict[str, Format] = {}
_GLOB_CHARS = frozenset("*?[")


def register(fmt: Format) -> Format:
    """Make ``fmt`` known: its files are recognized and its shards can be read.

    Raises
    ------
    StreamnormError
        When another format already has that kind.
    """
    if not fmt.kind or _FORMATS.get(fmt.kind, fmt) is not fmt:
        raise StreamnormError(f"a format named {fmt.kind!r} is registered already")
    _FORMATS[fmt.kind] = fmt
    return fmt


def unregister(kind: str) -> None:
    """Forget the format named ``kind`` (a no-op when none is registered)."""
    _FORMATS.pop(kind, None)


for _fmt in (ParquetFormat(), ImageFormat(), NpyFormat(), ZarrFormat(), Hdf5Format(), H5adFormat(),
             WebDatasetFormat(), HFDatasetFormat()):
    register(_fmt)


def get_format(kind: str) -> Format:
    """The registered format named ``kind``.

    Examples
    --------
    >>> get_format("npy").suffixes
    ('.npy',)
    """
    try:
        return _FORMATS[kind]
    except KeyError:
        raise SourceError(
            f"unknown source kind {kind!r}; known: {', '.join(sorted(_FORMATS))}"
        ) from None


def kinds() -> tuple[str, ...]:
    """Names of the registered formats, in the order they are tried."""
    return tuple(_FORMATS)


def _either(words: Sequence[str]) -> str:
    """``"a, b or c"``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def formats_read() -> str:
    """``"Parquet, image (PNG, ...) or .npy files"``: what sources can hold, for messages.

    Examples
    --------
    >>> formats_read().startswith("Parquet, image (PNG")
    True
    """
    return f"{_either([f.noun for f in _FORMATS.values()])} files"


def kind_of_name(name: str) -> str | None:
    """The kind whose suffix ``name`` ends with, or ``None``."""
    lower = name.lower()
    for fmt in _FORMATS.values():
        if lower.endswith(fmt.suffixes):
            return fmt.kind
    return None


def sniff(fs: Any, path: str, url: str) -> str:
    """The kind of a file from its first bytes; :class:`SourceError` when none fits."""
    try:
        with fs.open(path, "rb") as f:
            head = f.read(12)
    except (OSError, PermissionError) as exc:
        raise SourceError(f"{display(url)}: cannot read file ({one_line(exc)})") from exc
    for fmt in _FORMATS.values():
        if fmt.sniff(head):
            return fmt.kind
    raise SourceError(
        f"{display(url)}: not a {_either([f.noun for f in _FORMATS.values()])} file; pass "
        f"{_either([f.plural for f in _FORMATS.values()])} (or folders holding them)"
    )


def _version(info: Mapping[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "created"):
        value = info.get(key)
        if value is not None:
            return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return ""


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


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
        plurals = _either([f.plural for f in _FORMATS.values()])
        raise SourceError(f"no source given; pass {plurals} (or folders holding them)")
    out: dict[str, tuple[str, FileInfo]] = {}
    for raw in (p for given in paths for p in expand_braces(os.fspath(given))):
        fs, path = fs_of(raw, storage_options)
        ignored_here: list[str] = []
        try:
            candidates = _candidates(fs, path, raw, ignored_here)
        except (PermissionError, OSError) as exc:
            if isinstance(exc, StreamnormError):
                raise
            raise SourceError(f"{raw}: cannot list ({one_line(exc)})") from exc
        for p, info, kind in candidates:
            url = fs.unstrip_protocol(p)
            if kind is None:
                kind = sniff(fs, p, url)
            out[url] = (kind, FileInfo(url, int(info.get("size") or 0), _version(info)))
        if ignored is not None:
            ignored.extend(display(fs.unstrip_protocol(p)) for p in ignored_here)
    return [out[url] for url in sorted(out)]


def _candidates(fs: Any, path: str, raw: str,
                ignored: list[str]) -> list[tuple[str, dict[str, Any], str | None]]:
    """``(path, info, kind or None)`` of the files that one argument names."""
    if any(ch in _GLOB_CHARS for ch in path):
        found = fs.glob(path, detail=True)
        if not found:
            raise SourceError(f"{raw}: no file matches this pattern")
        candidates = []
        for p, info in sorted(found.items()):
            claimed = _folder_kind(fs, p) if info.get("type") == "directory" else None
            if claimed is not None:
                candidates.append((p, info, claimed))
            elif info.get("type") == "directory":
                candidates.extend(_walk(fs, p, ignored))
            else:
                candidates.append((p, info, kind_of_name(p)))
        return candidates
    if fs.isdir(path):
        claimed = _folder_kind(fs, path)
        if claimed is not None:
            return [(path, fs.info(path), claimed)]
        candidates = _walk(fs, path, ignored)
        if not candidates:
            nouns = _either([f.folder_noun for f in _FORMATS.values()])
            raise SourceError(
                f"{raw}: this folder holds no {nouns} files"
                + (f" (it holds {_ignored_text(ignored)})" if ignored else "")
            )
        return candidates
    if fs.exists(path):
        return [(path, fs.info(path), kind_of_name(path))]
    raise SourceError(f"{raw}: no such file or directory")


def _walk(fs: Any, root: str, ignored: list[str]) -> list[tuple[str, dict[str, Any], str | None]]:
    """Data files under ``root`` (hidden ones skipped); other files go to ``ignored``."""
    found = fs.find(root, detail=True)
    result = []
    base = root.rstrip("/")
    stores: dict[str, str | None] = {}
    for p, info in sorted(found.items()):
        rel = p.removeprefix(base)
        store = _store_root(fs, base, rel, stores)
        if store is not None:
            if store[0] not in {r[0] for r in result}:
                result.append((store[0], fs.info(store[0]), store[1]))
            continue
        if _hidden(rel):
            continue
        kind = kind_of_name(p)
        if kind is None:
            ignored.append(p)
            continue
        result.append((p, info, kind))
    return result


def _folder_kind(fs: Any, path: str) -> str | None:
    """The kind of format that claims the folder ``path`` as one input (a Zarr store), or ``None``."""
    for fmt in _FORMATS.values():
        if fmt.claims_folder(fs, path):
            return fmt.kind
    return None


def _store_root(fs: Any, base: str, rel: str,
                seen: dict[str, str | None]) -> tuple[str, str] | None:
    """``(store folder, kind)`` when ``base + rel`` lies inside a store named by its suffix.

    ``seen`` remembers the folders already asked about (a store has many files).
    """
    parts = rel.strip("/").split("/")[:-1]
    for i, part in enumerate(parts):
        for fmt in _FORMATS.values():
            if fmt.folder_suffixes and part.lower().endswith(fmt.folder_suffixes):
                root = "/".join([base, *parts[: i + 1]])
                if root not in seen:
                    seen[root] = fmt.kind if fmt.claims_folder(fs, root) else None
                if seen[root] is not None:
                    return root, seen[root]
    return None


def _ignored_text(paths: Sequence[str], shown: int = 3) -> str:
    """``"2 other files: a.txt, b.csv"``: files of other types, for messages."""
    names = ", ".join(p.rsplit("/", 1)[-1] for p in paths[:shown])
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return f"{len(paths)} other file{'s' if len(paths) != 1 else ''}: {names}{more}"


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
    array: str | None = None,
    key: str | None = None,
) -> Source:
    """Resolve paths into a :class:`~streamnorm.sources.Source` of shards.

    Parameters
    ----------
    paths : str or sequence of str
        Files, folders (searched recursively), globs or fsspec URLs, all of
        one kind: Parquet, images (PNG, JPEG, BMP, GIF, WebP, TIFF), ``.npy``,
        Zarr stores or HDF5 files.
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
        Colour handling of decoded images (see :mod:`streamnorm.sources`).
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
    array : str, optional
        The array or matrix to read in a file or store of many: a Zarr array
        or HDF5 dataset by its path inside (needed when it holds several), or
        ``"X"`` (default) / ``"layers/NAME"`` of an AnnData ``.h5ad``.
    key : str, optional
        WebDataset: which member of each sample is read (``"jpg"``, ``"npy"``);
        default: its one image member.

    Raises
    ------
    SourceError
        Missing paths, mixed or unknown file kinds, unreadable or non-Parquet
        files, missing or non-numeric columns.
    LayoutError
        A layout that does not fit the data.
    """
    so = dict(storage_options or {})
    check_image_mode(image_mode)
    for name, value in (("shard_bytes", shard_bytes), ("images_per_shard", images_per_shard),
                        ("batch_bytes", batch_bytes)):
        if not isinstance(value, int) or value < 1:
            raise StreamnormError(f"{name} must be a positive integer, got {value!r}")
    if layout is not None:
        parse_layout(layout)
    ignored: list[str] = []
    files = resolve_files(paths, so, ignored)
    kind = _one_kind(files)
    request = OpenRequest(layout=layout, columns=None if columns is None else tuple(columns),
                          image_column=image_column, image_mode=image_mode, storage_options=so,
                          shard_bytes=shard_bytes, images_per_shard=images_per_shard,
                          batch_bytes=batch_bytes, array=array, key=key)
    if array is not None and not get_format(kind).takes_array:
        raise SourceError(f"--array names a matrix inside a file, but {kind} files hold only one")
    if key is not None and not get_format(kind).uses_key:
        raise SourceError(f"--key chooses a member of WebDataset samples, but the sources are {kind} "
                          f"files (e.g. {display(files[0][1].url)}); drop --key")
    source = get_format(kind).open([f for _, f in files], request)
    return replace(source, ignored_files=(*ignored, *source.ignored_files))


def _one_kind(files: Sequence[tuple[str, FileInfo]]) -> str:
    """The one kind of all ``files``; :class:`SourceError` when they mix kinds."""
    found = sorted({k for k, _ in files})
    if len(found) > 1:
        examples = {k: display(f.url) for k, f in files}
        raise SourceError(
            "the sources mix " + " and ".join(f"{k} files (e.g. {examples[k]})" for k in found)
            + "; compute one kind at a time"
        )
    return found[0]
