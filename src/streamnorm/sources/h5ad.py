"""AnnData ``.h5ad`` files through h5py: ``X`` or a layer, per gene, never densified whole.

An ``.h5ad`` file is HDF5 as anndata writes it: ``X`` (cells x genes) is a
dataset when dense, or a group with ``data``, ``indices``, ``indptr`` and the
attributes ``encoding-type`` (``csr_matrix`` / ``csc_matrix``) and ``shape``
when sparse; ``layers/NAME`` holds more matrices of that shape; the ``var``
dataframe's index (the dataset its ``_index`` attribute names) holds the gene
names. Statistics are per gene (layout ``NF``, features named after
``var_names``); ``array="layers/NAME"`` (``--array``) picks a layer.

Reading needs only h5py and scipy (the extra ``anndata``), never the anndata
package, and keeps memory bounded by ``batch_bytes``:

- dense ``X``: row blocks of the dataset; shards are row ranges;
- CSR (cells are rows, anndata's usual layout): ``indptr`` is read once, then
  ``data``/``indices`` slices of whole rows per block, reduced as
  ``scipy.sparse`` batches (stored values, implicit zeros counted); shards are
  row ranges of about ``shard_bytes`` stored bytes;
- CSC (genes are the stored columns): a row block would need every column's
  ``indices``, so the natural cut is by genes: each block of whole columns is
  reduced on its own and the blocks' statistics are put side by side. A CSC
  file is therefore one shard (files run in parallel, not parts of one);
  its memory is still one column block.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import LayoutError
from .base import (
    FileInfo,
    Format,
    OpenRequest,
    ReadOptions,
    Shard,
    ShardResult,
    Source,
    SourceError,
    concat_features,
    display,
    fs_of,
    is_local,
    one_line,
    reject_table_options,
)

H5AD_SUFFIXES = (".h5ad",)
#: What to install when h5py or scipy is missing.
H5AD_EXTRA = "pip install 'streamnorm[anndata]'"
DEFAULT_ARRAY = "X"
DENSE, CSR, CSC = "dense", "csr_matrix", "csc_matrix"


@dataclass(frozen=True)
class Matrix:
    """What one file's matrix is: its encoding, shape, value dtype and bytes per stored value."""

    encoding: str
    shape: tuple[int, int]
    dtype: np.dtype
    entry_bytes: int


def h5py_module() -> Any:
    """h5py (with scipy.sparse importable), or a :class:`SourceError` naming the extra."""
    try:
        import h5py
        import scipy.sparse  # noqa: F401
    except ImportError as exc:
        raise SourceError(
            f"reading .h5ad files needs h5py and scipy ({one_line(exc)}): {H5AD_EXTRA}"
        ) from None
    return h5py


@contextmanager
def _opened(url: str, storage_options: dict[str, Any]) -> Iterator[Any]:
    """The HDF5 file at ``url`` (local path, or any fsspec URL through a file object)."""
    h5py = h5py_module()
    fs, path = fs_of(url, storage_options)
    try:
        if is_local(fs):
            handle = h5py.File(path, "r")
        else:
            handle = h5py.File(fs.open(path, "rb"), "r")
    except (OSError, ValueError) as exc:
        raise SourceError(f"{display(url)}: not a readable .h5ad (HDF5) file ({one_line(exc)})") from exc
    with handle:
        yield handle


def _node(handle: Any, url: str, array: str) -> Any:
    if array not in handle:
        layers = sorted(f"layers/{k}" for k in handle.get("layers", {}))
        raise SourceError(
            f"{display(url)}: has no matrix {array!r}; pass --array X"
            + (f" or one of {', '.join(layers)}" if layers else "")
        )
    return handle[array]


def _attr(node: Any, name: str) -> Any:
    value = node.attrs.get(name)
    return value.decode() if isinstance(value, bytes) else value


def describe_matrix(handle: Any, url: str, array: str) -> Matrix:
    """The encoding, shape and dtype of ``array`` in an open ``.h5ad`` file."""
    import h5py

    node = _node(handle, url, array)
    where = f"{display(url)}: {array}"
    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise LayoutError(f"{where} has shape {node.shape}; an AnnData matrix is 2-D (cells x genes)")
        return Matrix(DENSE, (int(node.shape[0]), int(node.shape[1])), _numeric(node.dtype, where), 0)
    encoding = _attr(node, "encoding-type") or _attr(node, "h5sparse_format")
    encoding = {"csr": CSR, "csc": CSC}.get(encoding, encoding)
    shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
    if encoding not in (CSR, CSC) or shape is None or not {"data", "indices", "indptr"} <= set(node):
        raise SourceError(
            f"{where} is neither a dense matrix nor a CSR/CSC sparse matrix as anndata writes them "
            f"(encoding-type {encoding!r}); pass --array with a matrix of the file"
        )
    dtype = _numeric(node["data"].dtype, f"{where}/data")
    return Matrix(encoding, (int(shape[0]), int(shape[1])), dtype,
                  dtype.itemsize + node["indices"].dtype.itemsize)


def _numeric(dtype: np.dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise SourceError(f"{where} holds dtype {dtype}; only bool, integer and float matrices have statistics")
    return dtype


def var_names(handle: Any, url: str) -> tuple[str, ...] | None:
    """The genes' names: the ``var`` dataframe's index (``None`` when the file has none)."""
    var = handle.get("var")
    if var is None or not hasattr(var, "attrs") or "_index" not in var.attrs:
        return None
    name = _attr(var, "_index")
    if name not in var:
        raise SourceError(f"{display(url)}: var names its index {name!r}, which it does not hold")
    values = var[name]
    raw = values.asstr()[()] if values.dtype.kind in "OSU" else values[()]
    return tuple(str(v) for v in raw)


class H5adFormat(Format):
    """AnnData ``.h5ad`` files (h5py + scipy; the extra ``anndata``)."""

    kind = "h5ad"
    suffixes = H5AD_SUFFIXES
    magic = ()  # HDF5's signature is shared with plain .h5 files: recognized by suffix only
    noun = ".h5ad"
    folder_noun = ".h5ad"
    plural = ".h5ad files"
    takes_array = True

    def open(self, files: Sequence[FileInfo], request: OpenRequest) -> Source:
        reject_table_options(self.kind, files, request)
        if request.layout not in (None, "NF"):
            raise LayoutError(
                f"{display(files[0].url)}: an AnnData matrix is cells x genes, statistics are per "
                f"gene: use layout 'NF' (got {request.layout!r})"
            )
        array = request.array or DEFAULT_ARRAY
        so = request.storage_options
        matrices, names, indptrs = [], None, []
        for info in files:
            with _opened(info.url, so) as handle:
                try:
                    matrix = describe_matrix(handle, info.url, array)
                    file_names = var_names(handle, info.url)
                    indptr = (handle[array]["indptr"][()].astype(np.int64)
                              if matrix.encoding == CSR else None)
                except (OSError, KeyError) as exc:
                    raise SourceError(f"{display(info.url)}: {array}: cannot read ({one_line(exc)})") from exc
            if file_names is not None and len(file_names) != matrix.shape[1]:
                file_names = None  # a var index that does not fit is not the genes' names
            if matrices and matrix.shape[1] != matrices[0].shape[1]:
                raise SourceError(
                    f"the .h5ad files disagree on their number of genes: {display(files[0].url)} has "
                    f"{matrices[0].shape[1]}, {display(info.url)} has {matrix.shape[1]}"
                )
            if matrices and file_names != names:
                raise SourceError(
                    f"{display(info.url)}: its var_names differ from {display(files[0].url)}'s; "
                    f"statistics per gene need the same genes in the same order"
                )
            matrices.append(matrix)
            names = file_names
            indptrs.append(indptr)
        options = ReadOptions(layout="NF", batch_bytes=request.batch_bytes, feature_names=names,
                              array=array)
        shards = []
        for info, matrix, indptr in zip(files, matrices, indptrs):
            for lo, hi, nbytes in _cut(matrix, indptr, request.shard_bytes):
                shards.append(Shard(self.kind, (info,), lo, hi, options, so, nbytes))
        return Source(self.kind, "NF", names, tuple(shards), options, so)

    def shard_id(self, shard: Shard) -> str:
        return f"{shard.kind}:{shard.files[0].url}:{shard.options.array}#rows={shard.start}-{shard.stop}"

    def where(self, shard: Shard) -> str:
        return f"{display(shard.files[0].url)}: {shard.options.array} ({self.span(shard.start, shard.stop)})"

    def batches(self, shard: Shard, skip_bad: bool) -> Iterator[Any]:
        """Row blocks: numpy arrays (dense) or ``scipy.sparse.csr_matrix`` (sparse)."""
        with _opened(shard.files[0].url, shard.storage_options) as handle:
            yield from self._guarded(shard, handle, lambda node, m: _row_blocks(node, m, shard))

    def reduce(self, shard: Shard, histogram: bool, nan_policy: str, skip_bad: bool,
               read_threads: bool, ignore_value: float | int | None = None) -> ShardResult:
        from ..accumulate import StatsAccumulator

        names = shard.options.feature_names
        # the next block is read while this one is reduced (the kernels release the GIL):
        # two blocks of half the budget are in memory at once
        half = max(1, shard.options.batch_bytes // 2)
        with _opened(shard.files[0].url, shard.storage_options) as handle:
            matrix = describe_matrix(handle, shard.files[0].url, shard.options.array)
            if matrix.encoding == CSC:
                names = names or tuple(str(i) for i in range(matrix.shape[1]))
                parts = []
                blocks = self._guarded(shard, handle, lambda node, m: _column_blocks(node, m, shard, half))
                for c0, c1, block in _prefetched(blocks):
                    acc = StatsAccumulator("NF", names[c0:c1], histogram, nan_policy, ignore_value=ignore_value)
                    parts.append(acc.update(block).result())
                stats = concat_features(parts, "NF")
                return ShardResult(shard.id, (stats,), shard.stop - shard.start, shard.nbytes)
            acc = StatsAccumulator("NF", names, histogram, nan_policy, ignore_value=ignore_value)
            rows = 0
            blocks = self._guarded(shard, handle, lambda node, m: _row_blocks(node, m, shard, half))
            for block in _prefetched(blocks):
                acc.update(block)
                rows += block.shape[0]
        if acc.n_features is None:
            return ShardResult(shard.id, (), 0, shard.nbytes)
        return ShardResult(shard.id, (acc.result(),), rows, shard.nbytes)

    @staticmethod
    def _guarded(shard: Shard, handle: Any, reader: Any) -> Iterator[Any]:
        """``reader``'s blocks; HDF5 read errors become one line naming the file and the matrix."""
        url, array = shard.files[0].url, shard.options.array
        try:
            matrix = describe_matrix(handle, url, array)
            yield from reader(handle[array], matrix)
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, SourceError):
                raise
            raise SourceError(
                f"{display(url)}: {array} ({shard.format.span(shard.start, shard.stop)}): "
                f"cannot read ({one_line(exc)})"
            ) from exc


def _cut(matrix: Matrix, indptr: np.ndarray | None, shard_bytes: int) -> list[tuple[int, int, int]]:
    """``(start, stop, bytes)`` row ranges of one file's matrix."""
    rows, cols = matrix.shape
    if matrix.encoding == CSC:
        return [(0, rows, 0)]  # cut by genes inside the shard (see the module notes)
    if matrix.encoding == DENSE:
        row_bytes = max(cols * matrix.dtype.itemsize, 1)
        step = max(1, shard_bytes // row_bytes)
        return [(lo, min(rows, lo + step), (min(rows, lo + step) - lo) * row_bytes)
                for lo in range(0, max(rows, 1), step)]
    return [(lo, hi, int(indptr[hi] - indptr[lo]) * matrix.entry_bytes)
            for lo, hi in _spans(indptr, 0, rows, max(1, shard_bytes // matrix.entry_bytes))]


def _spans(indptr: np.ndarray, start: int, stop: int, max_entries: int) -> list[tuple[int, int]]:
    """Ranges of whole rows (or columns) from ``start`` to ``stop``, each of at most
    ``max_entries`` stored values (or one row when a single row holds more)."""
    spans = []
    lo = start
    while lo < stop:
        limit = indptr[lo] + max_entries
        hi = int(np.searchsorted(indptr, limit, side="right")) - 1
        hi = min(stop, max(hi, lo + 1))
        spans.append((lo, hi))
        lo = hi
    return spans


_END = object()


def _prefetched(blocks: Iterator[Any]) -> Iterator[Any]:
    """``blocks``, each read on one helper thread while the caller works on the one before."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="streamnorm-h5ad") as pool:
        pending = pool.submit(next, blocks, _END)
        while True:
            block = pending.result()
            if block is _END:
                return
            pending = pool.submit(next, blocks, _END)
            yield block


def _row_blocks(node: Any, matrix: Matrix, shard: Shard, budget: int | None = None) -> Iterator[Any]:
    """The shard's rows in blocks of about ``budget`` (default ``batch_bytes``) bytes
    (stored bytes for sparse matrices)."""
    import scipy.sparse as sp

    rows, cols = matrix.shape
    budget = budget or shard.options.batch_bytes
    if matrix.encoding == DENSE:
        step = max(1, budget // max(cols * matrix.dtype.itemsize, 1))
        for lo in range(shard.start, shard.stop, step):
            yield node[lo:min(lo + step, shard.stop)]
        return
    if matrix.encoding == CSR:
        indptr = node["indptr"][shard.start:shard.stop + 1].astype(np.int64)
        for lo, hi in _spans(indptr - indptr[0], 0, shard.stop - shard.start,
                             max(1, budget // matrix.entry_bytes)):
            p0, p1 = int(indptr[lo]), int(indptr[hi])
            yield sp.csr_matrix((node["data"][p0:p1], node["indices"][p0:p1], indptr[lo:hi + 1] - p0),
                                shape=(hi - lo, cols))
        return
    # CSC read as rows (Shard.batches only; reduce() goes by columns): each row block keeps
    # the entries of its rows from one column block at a time, so memory stays bounded.
    step = max(1, budget // max(cols * 16, 1) * 16)
    for lo in range(shard.start, shard.stop, step):
        hi = min(lo + step, shard.stop)
        pieces = []
        for c0, _c1, block in _column_blocks(node, matrix, shard):
            coo = block.tocoo()
            keep = (coo.row >= lo) & (coo.row < hi)
            pieces.append((coo.data[keep], coo.row[keep] - lo, coo.col[keep] + c0))
        data, r, c = (np.concatenate(p) for p in zip(*pieces))
        yield sp.csr_matrix((data, (r, c)), shape=(hi - lo, cols))


def _column_blocks(node: Any, matrix: Matrix, shard: Shard,
                   budget: int | None = None) -> Iterator[tuple[int, int, Any]]:
    """``(first, stop, csc block)`` of whole columns, about ``budget`` (default ``batch_bytes``)
    stored bytes each."""
    import scipy.sparse as sp

    rows, cols = matrix.shape
    indptr = node["indptr"][()].astype(np.int64)
    budget = budget or shard.options.batch_bytes
    for c0, c1 in _spans(indptr, 0, cols, max(1, budget // matrix.entry_bytes)):
        p0, p1 = int(indptr[c0]), int(indptr[c1])
        yield c0, c1, sp.csc_matrix((node["data"][p0:p1], node["indices"][p0:p1], indptr[c0:c1 + 1] - p0),
                                    shape=(rows, c1 - c0))
