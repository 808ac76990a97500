"""Hugging Face ``datasets`` folders written by ``save_to_disk``, read with pyarrow alone.

A ``Dataset.save_to_disk(folder)`` writes Arrow IPC *stream* files
(``data-00000-of-00004.arrow``...), ``state.json`` (which lists them, in order)
and ``dataset_info.json``. Pass the folder (or its ``.arrow`` files, a glob,
an fsspec URL): the files listed in ``state.json`` are read, in its order, one
shard per file; ``.arrow`` files it does not list (e.g. ``cache-*.arrow`` of
``map``) are left out and reported as ignored.

A ``DatasetDict.save_to_disk(root)`` writes ``dataset_dict.json`` and one
folder per split: pass the split's folder (``root/train``); passing the root
is an error that names its splits. Statistics are kept per split anyway.

Columns are treated exactly as Parquet columns are (shared code in
:mod:`~streamnorm.sources.parquet`): numeric columns -> layout ``NF`` (nulls
under ``nan_policy``), one fixed-size-list / tensor column with ``layout``,
and ``image_column=`` for an ``Image()`` feature (``struct<bytes, path>``) ->
``NHWC``. Local files are memory-mapped; the ``datasets`` package is not needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import StreamnormError
from .base import (
    FileInfo,
    OpenRequest,
    Shard,
    Source,
    SourceError,
    display,
    fs_of,
    is_local,
    one_line,
)
from .parquet import ParquetFormat, _combined, select_columns

#: What ``save_to_disk`` writes: the data, and the two files that describe it.
HF_SUFFIXES = (".arrow", "/state.json", "/dataset_info.json", "/dataset_dict.json")


class HFDatasetFormat(ParquetFormat):
    """Hugging Face ``datasets`` folders (``save_to_disk``): Arrow IPC stream files."""

    kind = "hf"
    suffixes = HF_SUFFIXES
    magic = ()
    noun = "Hugging Face datasets (.arrow)"
    folder_noun = "Hugging Face datasets (.arrow)"
    plural = "Hugging Face datasets folders (save_to_disk)"
    unit_short = "rows"
    range_unit = "row"

    def open(self, files: Sequence[FileInfo], request: OpenRequest) -> Source:
        so = request.storage_options
        data, ignored = _data_files(files, so)
        schemas = [(info, _schema(info, so)) for info in data]
        options, layout, feature_names, ignored_columns = select_columns(
            schemas, request.layout, request.columns, request.image_column, request.image_mode,
            request.batch_bytes, "Hugging Face datasets")
        shards = tuple(Shard(self.kind, (info,), 0, 0, options, so, info.size) for info in data)
        return Source(self.kind, layout, feature_names, shards, options, so,
                      ignored_files=tuple(ignored), ignored_columns=ignored_columns)

    def shard_id(self, shard: Shard) -> str:
        return f"{self.kind}:{shard.files[0].url}"

    def where(self, shard: Shard) -> str:
        return display(shard.files[0].url)

    def read_columns(self, shard: Shard, columns: Sequence[str] | None = None,
                     read_threads: bool = True) -> Iterator[list[Any]]:
        """Record batches of the stream, gathered up to ``batch_bytes``, as Arrow columns."""
        import pyarrow as pa

        names = list(columns if columns is not None else shard.options.columns)
        info = shard.files[0]
        pending: list[Any] = []
        size = 0
        try:
            with _stream(info, shard.storage_options) as reader:
                for rb in reader:
                    rb = rb.select(names)
                    pending.append(rb)
                    size += rb.nbytes
                    if size >= shard.options.batch_bytes:
                        yield _columns(pending)
                        pending, size = [], 0
        except (OSError, ValueError, pa.ArrowException) as exc:
            if isinstance(exc, StreamnormError):
                raise
            raise SourceError(f"{display(info.url)}: cannot read Arrow data ({one_line(exc)})") from exc
        if pending:
            yield _columns(pending)

    def read_pieces(self, shard: Shard, read_threads: bool = True) -> Iterator[tuple[int, list[Any]]]:
        """All columns at once: a stream's record batches cannot be read a few columns at a time."""
        for columns in self.read_columns(shard, read_threads=read_threads):
            yield 0, columns

    def first_row(self, shard: Shard) -> int:
        return 0  # one shard per file


def _columns(batches: list[Any]) -> list[Any]:
    import pyarrow as pa

    table = pa.Table.from_batches(batches)
    return [_combined(table.column(k)) for k in range(table.num_columns)]


class _stream:  # noqa: N801 - a context manager used like a function
    """``with _stream(info, so) as reader``: an Arrow IPC stream reader (memory-mapped locally)."""

    def __init__(self, info: FileInfo, so: Any) -> None:
        self.info, self.so, self.handle = info, so, None

    def __enter__(self) -> Any:
        import pyarrow as pa

        fs, path = fs_of(self.info.url, self.so)
        try:
            self.handle = pa.memory_map(path) if is_local(fs) else fs.open(path, "rb")
            return pa.ipc.open_stream(self.handle)
        except (OSError, ValueError, pa.ArrowException) as exc:
            self.__exit__()
            raise SourceError(f"{display(self.info.url)}: not a readable Arrow IPC stream file "
                              f"(as save_to_disk writes; {one_line(exc)})") from exc

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _schema(info: FileInfo, so: Any) -> Any:
    with _stream(info, so) as reader:
        return reader.schema


def _folder(url: str) -> str:
    return url.rsplit("/", 1)[0]


def _data_files(files: Sequence[FileInfo], so: Any) -> tuple[list[FileInfo], list[str]]:
    """The ``.arrow`` files to read, in ``state.json`` order, and the files left out."""
    dicts = [f for f in files if f.name == "dataset_dict.json"]
    if dicts:
        root = _folder(dicts[0].url)
        splits = _read_json(dicts[0], so).get("splits") or []
        example = f"{display(root)}/{splits[0]}" if splits else f"{display(root)}/<split>"
        raise SourceError(
            f"{display(root)}: a DatasetDict (splits {', '.join(map(str, splits)) or 'none'}); "
            f"pass one split's folder, e.g. {example}, with --split naming it"
        )
    arrows = {f.url: f for f in files if f.name.lower().endswith(".arrow")}
    states = {_folder(f.url): f for f in files if f.name == "state.json"}
    chosen: list[FileInfo] = []
    ignored: list[str] = []
    listed_folders = set()
    for folder, state in sorted(states.items()):
        listed = _read_json(state, so).get("_data_files")
        if not isinstance(listed, list) or not listed:
            raise SourceError(f"{display(state.url)}: lists no data files ('_data_files'); "
                              f"is this folder written by Dataset.save_to_disk?")
        for entry in listed:
            name = entry.get("filename") if isinstance(entry, dict) else None
            url = f"{folder}/{name}"
            if not name or url not in arrows:
                raise SourceError(f"{display(state.url)}: lists {name!r}, which is missing "
                                  f"from {display(folder)}")
            chosen.append(arrows[url])
        listed_folders.add(folder)
    taken = {f.url for f in chosen}
    for url, info in sorted(arrows.items()):
        if _folder(url) not in listed_folders:
            chosen.append(info)  # a bare Arrow stream file, named on its own
        elif url not in taken:
            ignored.append(display(url))
    if not chosen:
        raise SourceError(f"{display(files[0].url)}: no .arrow data files next to it; pass a "
                          f"folder written by Dataset.save_to_disk")
    return chosen, ignored


def _read_json(info: FileInfo, so: Any) -> dict[str, Any]:
    fs, path = fs_of(info.url, so)
    try:
        with fs.open(path, "rb") as f:
            value = json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise SourceError(f"{display(info.url)}: not a readable JSON file ({one_line(exc)})") from exc
    if not isinstance(value, dict):
        raise SourceError(f"{display(info.url)}: holds {type(value).__name__}, not a JSON object")
    return value
