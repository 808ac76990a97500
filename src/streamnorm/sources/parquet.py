"""Parquet files: numeric columns (``NF``), one tensor column, or encoded images.

A shard is a run of whole row groups of one file (about ``shard_bytes``
compressed). What a file becomes:

- numeric columns (every integer and float column unless ``columns=`` names
  some; booleans only when named) -> layout ``NF``, one feature per column.
  Columns are read record batch by record batch and handed to the kernels
  without a copy where Arrow's buffer is a plain numpy array. Nulls are
  non-finite values under ``nan_policy``: NaN in float columns; in integer
  columns they are skipped and counted under ``"omit"`` and an error
  otherwise (integer statistics are exact sums, which cannot hold a NaN).
- one *tensor column* (fixed-size lists, nested, or Arrow's
  ``fixed_shape_tensor``): a flat list of ``k`` values gives ``k`` features
  named ``col[0]``... (``NF``); higher ranks need ``layout=``.
- ``image_column=``: a binary column of encoded images (or a Hugging Face
  ``struct<bytes, path>`` image column) -> ``NHWC``, as image files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from .._prefetch import Prefetch
from ..errors import LayoutError, NonFiniteError, StreamnormError
from ..layout import parse_layout
from ..stats import Stats
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
    add_nan,
    concat_features,
    display,
    fs_of,
    is_local,
    one_line,
)

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
#: Decoded bytes read at a time when reducing numeric columns: a few columns of
#: a row group (all of them when they are small). Buffers of this size are
#: reused by Arrow's allocator instead of being faulted in afresh, and the
#: kernels find them still in cache (see benchmarks/bench_parquet_read.py).
PIECE_BYTES = 4 * 2**20
#: Pieces decoded ahead of the reduction by the reader thread.
PREFETCH_DEPTH = 1


class ParquetFormat(Format):
    """Parquet files (numeric columns, a tensor column, or an image column)."""

    kind = "parquet"
    suffixes = PARQUET_SUFFIXES
    magic = (b"PAR1",)
    noun = "Parquet"
    folder_noun = "Parquet (.parquet)"
    plural = "Parquet files"
    unit_short = "rg"
    range_unit = "row group"

    def open(self, files: Sequence[FileInfo], request: OpenRequest) -> Source:
        return _open_parquet_source(
            list(files), request.layout, request.columns, request.image_column,
            request.image_mode, request.storage_options, request.shard_bytes, request.batch_bytes,
        )

    def unit(self, options: ReadOptions) -> str:
        return "images" if options.image_column is not None else "rows"

    def decodes(self, options: ReadOptions) -> bool:
        return options.image_column is not None

    def batches(self, shard: Shard, skip_bad: bool) -> Iterator[np.ndarray]:
        if shard.options.image_column is not None:
            for _where, image in _column_images(shard, skip_bad, skipped=[]):
                yield image[None]
            return
        for columns in self.read_columns(shard):
            if shard.options.tensor_shape:
                yield _tensor_values(shard, columns[0], policy="propagate")[0]
            else:
                yield np.column_stack([_arrow_to_numpy(col, nulls_as_nan=True) for col in columns])

    def reduce(self, shard: Shard, histogram: bool, nan_policy: str, skip_bad: bool,
               read_threads: bool, ignore_value: float | int | None = None) -> ShardResult:
        if shard.options.image_column is not None:
            skipped: list[tuple[str, str]] = []
            parts, n = reduce_images(_column_images(shard, skip_bad, skipped), histogram,
                                     nan_policy, shard.options.feature_names, ignore_value)
            return ShardResult(shard.id, parts, n, shard.nbytes, tuple(skipped))
        acc_options = {"histogram": histogram, "nan_policy": nan_policy, "ignore_value": ignore_value}
        if shard.options.tensor_shape:
            return _compute_tensor(shard, acc_options, read_threads)
        return _compute_table(shard, acc_options, read_threads)

    def check(self, source: Source, results: Mapping[str, ShardResult]) -> None:
        if source.options.image_column is not None:
            check_one_bit_depth(source, results)

    # -- what other table formats (Arrow IPC files) replace ----------------------
    def read_columns(self, shard: Shard, columns: Sequence[str] | None = None,
                     read_threads: bool = True) -> Iterator[list[Any]]:
        """The shard's selected columns (or ``columns``), one list of Arrow arrays per read."""
        return _table_batches(shard, columns, read_threads)

    def read_pieces(self, shard: Shard, read_threads: bool = True) -> Iterator[tuple[int, list[Any]]]:
        """The shard's selected columns as ``(index of the first column, Arrow arrays)`` pieces.

        Every row range yields its columns in order, the piece of column 0
        first; a piece holds some of the columns (the reducer keeps their
        statistics apart until the end).
        """
        return _parquet_pieces(shard, read_threads)

    def first_row(self, shard: Shard) -> int:
        """Index in its file of the shard's first row (for messages naming rows)."""
        pf = _open_parquet(shard)
        try:
            return sum(pf.metadata.row_group(i).num_rows for i in range(shard.start))
        finally:
            pf.close()


# -- opening ------------------------------------------------------------------


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

    fs, path = fs_of(info.url, so)
    try:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata
    except PermissionError as exc:
        raise SourceError(f"{display(info.url)}: cannot read file ({one_line(exc)})") from exc
    except (OSError, ValueError) as exc:
        raise SourceError(
            f"{display(info.url)}: not a readable Parquet file ({one_line(exc)})"
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
    metas = [_read_footer(info, so) for info in infos]
    options, out_layout, feature_names, ignored_columns = select_columns(
        [(info, meta.schema.to_arrow_schema()) for info, meta in zip(infos, metas)],
        layout, columns, image_column, image_mode, batch_bytes, "Parquet")
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
                shards.append(Shard(ParquetFormat.kind, (info,), start, i + 1, options, so, size))
                start, size = i + 1, 0
    return Source(ParquetFormat.kind, out_layout, feature_names, tuple(shards), options, so,
                  ignored_columns=ignored_columns)


def select_columns(
    schemas: Sequence[tuple[FileInfo, Any]],
    layout: str | None,
    columns: Sequence[str] | None,
    image_column: str | None,
    image_mode: str,
    batch_bytes: int,
    what: str,
) -> tuple[ReadOptions, str, tuple[str, ...] | None, tuple[str, ...]]:
    """Which columns of Arrow tables are read, and as what: shared by every table format.

    ``schemas`` pairs each file with its Arrow schema; ``what`` names the
    format in messages. Returns the read options, the layout, the feature
    names and the non-numeric columns left out (``"name (type)"``).
    """
    import pyarrow as pa

    first_schema = schemas[0][1]
    infos = [info for info, _ in schemas]
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
                    f"{display(infos[0].url)}: no numeric columns (columns: {described}); {hint}"
                )
        if len(set(selected)) != len(selected):
            raise SourceError(f"columns are repeated: {list(selected)}")
        out_layout, feature_names = "NF", selected
    for info, schema in schemas:
        for name in selected:
            idx = schema.get_field_index(name)
            if idx < 0:
                raise SourceError(
                    f"{display(info.url)}: has no column {name!r} (columns: {schema.names})"
                )
            typ = schema.field(idx).type
            if image_column is not None:
                ok = (pa.types.is_binary(typ) or pa.types.is_large_binary(typ)
                      or (pa.types.is_struct(typ) and typ.get_field_index("bytes") >= 0))
                if not ok:
                    raise SourceError(
                        f"{display(info.url)}: image column {name!r} has type {typ}; it must "
                        f"hold encoded image bytes (binary, or a struct with a 'bytes' field)"
                    )
                continue
            tensor = _tensor_shape(typ)
            if tensor is not None:
                if len(selected) > 1:
                    raise SourceError(
                        f"{display(info.url)}: column {name!r} holds tensors ({typ}); select it "
                        f"on its own (--columns {name}), not with other columns"
                    )
                shape, value_type = tensor
                if not _numeric(value_type, True):
                    raise SourceError(
                        f"{display(info.url)}: tensor column {name!r} holds {value_type}, "
                        f"which is not numeric"
                    )
                if tensor_shape and shape != tensor_shape:
                    raise SourceError(
                        f"{display(info.url)}: tensor column {name!r} has shape {shape}, "
                        f"other files {tensor_shape}"
                    )
                tensor_shape = shape
            elif not _numeric(typ, True):
                raise SourceError(
                    f"{display(info.url)}: column {name!r} has type {typ}, which is not numeric; "
                    f"pick integer or float columns with --columns"
                )
            elif tensor_shape:
                raise SourceError(f"{display(info.url)}: column {name!r} is not a tensor column")
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
            f"numeric {what} columns are read as 'NF' (one feature per column); "
            f"drop --layout {layout!r}"
        )
    ignored_columns = () if (columns or image_column is not None) else tuple(
        f"{f.name} ({f.type})" for f in first_schema if not _numeric(f.type, False))
    options = ReadOptions(layout=out_layout, columns=selected, tensor_shape=tensor_shape,
                          image_column=image_column, image_mode=image_mode,
                          batch_bytes=batch_bytes,
                          feature_names=feature_names if tensor_shape else None)
    return options, out_layout, feature_names, ignored_columns


# -- reading ------------------------------------------------------------------


def _open_parquet(shard: Shard) -> Any:
    import pyarrow.parquet as pq

    info = shard.files[0]
    fs, path = fs_of(info.url, shard.storage_options)
    try:
        if is_local(fs):
            # Mapped, not read: pages come straight from the page cache
            # instead of being copied into a read buffer first.
            return pq.ParquetFile(path, memory_map=True, pre_buffer=False)
        return pq.ParquetFile(fs.open(path, "rb"))
    except (OSError, ValueError) as exc:
        raise SourceError(
            f"{display(info.url)}: not a readable Parquet file ({one_line(exc)})"
        ) from exc


@contextmanager
def _reading(shard: Shard, read_threads: bool) -> Iterator[tuple[Any, bool]]:
    """The shard's open ``ParquetFile`` and whether to read it on threads; closed after.

    Arrow's read errors leave as a :class:`SourceError` naming the shard.
    """
    import pyarrow as pa

    pf = _open_parquet(shard)
    # A threaded read of an in-memory buffer can abort the interpreter at
    # exit (apache/arrow #34314), so only files pyarrow opens itself use threads.
    threaded = read_threads and is_local(fs_of(shard.files[0].url, shard.storage_options)[0])
    try:
        yield pf, threaded
    except (OSError, ValueError, pa.ArrowException) as exc:
        if isinstance(exc, StreamnormError):
            raise
        raise SourceError(f"{shard.where}: cannot read Parquet data ({one_line(exc)})") from exc
    finally:
        pf.close()


def _table_batches(
    shard: Shard, columns: Sequence[str] | None = None, read_threads: bool = True
) -> Iterator[list[Any]]:
    """The shard's selected columns, one list of Arrow arrays per read.

    Row groups whose selected columns decode to at most ``batch_bytes``
    are read whole (pyarrow's fastest path); larger ones in record
    batches of about ``batch_bytes``, which bounds memory.
    """
    names = list(columns if columns is not None else shard.options.columns)
    wanted = set(names)
    with _reading(shard, read_threads) as (pf, threaded):
        meta = pf.metadata
        for i in range(shard.start, shard.stop):
            rg = meta.row_group(i)
            size = sum(rg.column(j).total_uncompressed_size for j in range(rg.num_columns)
                       if rg.column(j).path_in_schema.split(".")[0] in wanted)
            if size <= shard.options.batch_bytes or rg.num_rows <= 1:
                table = pf.read_row_group(i, columns=names, use_threads=threaded)
                yield [_combined(table.column(k)) for k in range(table.num_columns)]
                continue
            rows = max(1, rg.num_rows * shard.options.batch_bytes // max(size, 1))
            for rb in pf.iter_batches(batch_size=rows, row_groups=[i], columns=names,
                                      use_threads=threaded):
                yield [rb.column(k) for k in range(rb.num_columns)]


def _parquet_pieces(shard: Shard, read_threads: bool = True) -> Iterator[tuple[int, list[Any]]]:
    """:meth:`ParquetFormat.read_pieces`: row group by row group, columns about PIECE_BYTES at a time.

    The columns are cut into runs of equal count, the same for every row
    group of the shard. A row group whose columns decode to more than
    ``batch_bytes`` is read in record batches, cut where a read of all its
    columns would cut them (so a column meets the same batches however the
    columns are cut into runs, and gets the same statistics).
    """
    names = list(shard.options.columns)
    position = {name: k for k, name in enumerate(names)}
    with _reading(shard, read_threads) as (pf, threaded):
        meta = pf.metadata
        sizes = np.zeros((shard.stop - shard.start, len(names)), np.int64)
        for r, i in enumerate(range(shard.start, shard.stop)):
            rg = meta.row_group(i)
            for j in range(rg.num_columns):
                k = position.get(rg.column(j).path_in_schema.split(".")[0])
                if k is not None:
                    sizes[r, k] += rg.column(j).total_uncompressed_size
        widest = int(sizes.sum(axis=1).max(initial=0))
        width = max(1, min(len(names), len(names) * PIECE_BYTES // max(widest, 1)))
        for r, i in enumerate(range(shard.start, shard.stop)):
            n_rows = meta.row_group(i).num_rows
            size = int(sizes[r].sum())
            whole = size <= shard.options.batch_bytes or n_rows <= 1
            rows = max(1, n_rows * shard.options.batch_bytes // max(size, 1))
            for first in range(0, len(names), width):
                cols = names[first:first + width]
                if whole:
                    table = pf.read_row_group(i, columns=cols, use_threads=threaded)
                    yield first, [_combined(table.column(k)) for k in range(table.num_columns)]
                    continue
                for rb in pf.iter_batches(batch_size=rows, row_groups=[i], columns=cols,
                                          use_threads=threaded):
                    yield first, [rb.column(k) for k in range(rb.num_columns)]


def _compute_table(shard: Shard, acc_options: dict[str, Any], read_threads: bool) -> ShardResult:
    """Reduce a table shard; with ``read_threads``, the next piece is decoded during this one's reduction.

    ``read_threads`` is the engine's word that cores are free (one worker,
    or one shard); when every core already runs a shard of its own, a reader
    thread would only compete with them and hand pieces over out of cache.
    """
    reducer = _TableReducer(shard.options.columns, acc_options, shard.where)
    pieces = shard.format.read_pieces(shard, read_threads=read_threads)
    if not read_threads:
        for first, columns in pieces:
            reducer.update(columns, first)
    else:
        with Prefetch(pieces, depth=PREFETCH_DEPTH, name="streamnorm-reader") as ahead:
            for first, columns in ahead:
                reducer.update(columns, first)
    return ShardResult(shard.id, reducer.result(), reducer.rows, shard.nbytes)


def _tensor_values(shard: Shard, col: Any, policy: str) -> tuple[np.ndarray, int]:
    """A tensor column's batch as ``(rows, *shape)`` and the null rows dropped."""
    import pyarrow as pa

    shape = shard.options.tensor_shape
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
            f"{shard.where}: tensor column {shard.options.columns[0]!r} holds null values "
            f"inside its {flat.type} tensors; fill them or cast the column to float"
        )
    values = _arrow_to_numpy(flat, nulls_as_nan=True)
    if valid is not None:
        if not np.issubdtype(values.dtype, np.floating):
            raise NonFiniteError(
                f"{shard.where}: tensor column {shard.options.columns[0]!r} has "
                f"{int((~valid).sum())} null row(s); integer statistics cannot hold a "
                f"missing value under nan_policy={policy!r}; use nan_policy='omit'"
            )
        full = np.full((len(valid), int(np.prod(shape))), np.nan, dtype=values.dtype)
        full[valid] = values.reshape(-1, full.shape[1])
        return full.reshape((len(valid), *shape)), 0
    return values.reshape((n_rows, *shape)), dropped


def _compute_tensor(shard: Shard, acc_options: dict[str, Any], read_threads: bool) -> ShardResult:
    from ..accumulate import StatsAccumulator

    nan_policy = acc_options["nan_policy"]
    acc = StatsAccumulator(layout=shard.options.layout,
                           feature_names=shard.options.feature_names, **acc_options)
    rows = 0
    dropped = 0
    seen = False
    for (col,) in shard.format.read_columns(shard, read_threads=read_threads):
        values, lost = _tensor_values(shard, col, nan_policy)
        rows += len(values) + lost
        dropped += lost
        if values.size or not seen:
            acc.update(values)
            seen = True
    if not seen:
        return ShardResult(shard.id, (), 0, shard.nbytes)
    stats = acc.result()
    if dropped:
        per_feature = int(np.prod(shard.options.tensor_shape)) // max(stats.n_features, 1)
        stats = add_nan(stats, [dropped * per_feature] * stats.n_features)
    return ShardResult(shard.id, (stats,), rows, shard.nbytes)


def _column_images(
    shard: Shard, skip_bad: bool, skipped: list[tuple[str, str]]
) -> Iterator[tuple[str, np.ndarray]]:
    import pyarrow as pa

    column = shard.options.image_column
    assert column is not None
    row = shard.format.first_row(shard)
    for (col,) in shard.format.read_columns(shard, [column]):
        if pa.types.is_struct(col.type):
            col = col.field("bytes")
        for value in col.to_pylist():
            where = f"{display(shard.files[0].url)} row {row}"
            row += 1
            try:
                if value is None:
                    raise BadRecordError(where, "the image value is null")
                records = decode_records(value, shard.options.image_mode, where)
            except BadRecordError as exc:
                if not skip_bad:
                    raise
                skipped.append((exc.where, exc.reason))
                continue
            yield from records


class _TableReducer:
    """Per-column statistics of a table's batches, one accumulator per dtype and run of columns.

    Batches come as pieces: some consecutive columns (a run starting at
    column ``first``) of some rows. Columns of one dtype within a run go to
    one accumulator (layout ``"FN"``) as a list
    (:meth:`StatsAccumulator.update_columns`): each column is reduced where
    Arrow decoded it, never copied into a stacked ``(features, rows)`` buffer.
    A column's statistics depend only on its own values and batches, so they
    are the same, bit for bit, however the columns are cut into runs. Each
    dtype keeps its own statistics, so integer columns keep their exact sums
    whatever the other columns hold. Integer columns with nulls
    (``nan_policy="omit"``) are ragged for that batch: their values are
    reduced column by column and merged exactly.
    """

    def __init__(self, names: Sequence[str], acc_options: dict[str, Any], where: str) -> None:
        self.names = tuple(names)
        self.acc_options = acc_options
        self.histogram = acc_options["histogram"]
        self.nan_policy = acc_options["nan_policy"]
        self.where = where
        self.rows = 0
        # first column of a run -> dtype -> the run's columns of that dtype
        self.groups: dict[int, dict[np.dtype, list[int]]] = {}
        self.accs: dict[tuple[int, np.dtype], Any] = {}
        self.extra: dict[tuple[int, np.dtype], list[Stats]] = {}
        self.nulls = np.zeros(len(self.names), np.int64)

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

    def _accumulator(self, members: Sequence[int]) -> Any:
        from ..accumulate import StatsAccumulator

        names = [self.names[j] for j in members]
        return StatsAccumulator(layout="FN", feature_names=names, **self.acc_options)

    def update(self, columns: Sequence[Any], first: int = 0) -> None:
        """Add columns ``first, first + 1, ...`` of some rows (rows are counted at column 0)."""
        n = len(columns[0]) if columns else 0
        if first == 0:
            self.rows += n
        if n == 0:
            return
        converted = [self._values(first + j, col) for j, col in enumerate(columns)]
        groups = self.groups.get(first)
        if groups is None:
            groups = self.groups[first] = {}
            for j, (values, _ragged) in enumerate(converted):
                groups.setdefault(values.dtype, []).append(first + j)
            for dtype, members in groups.items():
                self.accs[first, dtype] = self._accumulator(members)
                self.extra[first, dtype] = []
        for dtype, members in groups.items():
            arrays = [converted[j - first][0] for j in members]
            arrays = [a if a.dtype == dtype else a.astype(dtype) for a in arrays]
            if any(converted[j - first][1] for j in members):
                parts = [self._single(self.names[j], a) for j, a in zip(members, arrays)]
                self.extra[first, dtype].append(concat_features(parts, "FN"))
                continue
            self.accs[first, dtype].update_columns(arrays)

    def _single(self, name: str, values: np.ndarray) -> Stats:
        from ..accumulate import StatsAccumulator

        acc = StatsAccumulator(layout="FN", feature_names=[name], **self.acc_options)
        return acc.update(values.reshape(1, -1)).result()

    def result(self) -> tuple[Stats, ...]:
        """One :class:`Stats` per dtype (layout ``"NF"``, columns in order); empty without rows."""
        runs: dict[np.dtype, list[tuple[int, list[int]]]] = {}
        for first in sorted(self.groups):
            for dtype, members in self.groups[first].items():
                runs.setdefault(dtype, []).append((first, members))
        parts = []
        for dtype, pieces in runs.items():
            stats_of_runs = []
            for first, _members in pieces:
                acc = self.accs[first, dtype]
                merged = ([acc.result()] if acc.n_batches else []) + self.extra[first, dtype]
                stats_of_runs.append(Stats.merge_all(merged))
            stats = concat_features(stats_of_runs, "FN")
            members = [j for _first, m in pieces for j in m]
            stats = replace(stats, layout="NF", nan_count=stats.nan_count + self.nulls[members])
            parts.append(stats)
        return tuple(parts)


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
