"""Offline readers, one module per format, behind one small protocol.

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
    interlaced too) by :mod:`streamnorm._png`; TIFFs by tifffile (the extra
    ``tiff``; :mod:`~streamnorm.sources.tiff`): 8- or 16-bit, any channel
    count, each page of a stack one image.
    ``image_mode="RGB"`` (default) converts grayscale, palette and CMYK images
    to RGB (a gray value is repeated in the three channels) and *drops* the
    alpha channel of RGBA/LA images (no compositing). ``image_mode="L"`` gives
    one luma channel (ITU-R 601-2 for colour images, in integers as Pillow
    computes it, at 8 or 16 bits); ``image_mode="all"`` keeps every channel as
    stored (multispectral TIFFs). Images that cannot be read exactly
    (32-bit or floating-point samples; 16-bit colour TIFFs and TIFF stacks
    without tifffile) and animations are bad records, never reduced
    silently; a source mixing 8-bit and 16-bit images, or channel counts, is
    an error (their values are on different scales).
``.npy``
    Memory-mapped (``allow_pickle=False``); ``layout=`` says what the array
    holds (default ``"N"`` for 1-D, ``"NF"`` for 2-D arrays). Shards are row
    ranges along the first axis. Remote ``.npy`` files are read by range
    requests instead.
Zarr stores (v2, v3) and HDF5 files (``.h5``, ``.hdf5``)
    A Zarr store is a folder (or URL) holding ``.zarray``, ``.zgroup`` or
    ``zarr.json``; inside the folders given, folders named ``*.zarr`` are
    stores. Read through zarr and h5py (the extras ``zarr`` and ``hdf5``;
    :mod:`~streamnorm.sources.arrays`). ``array=`` names the array or dataset
    by its path inside (needed when there are several numeric ones),
    ``layout=`` its axes (default ``"N"``/``"NF"``, as ``.npy``). Shards are
    runs of whole chunks along the first axis; integer arrays take the exact
    path. A missing-data value declared by a ``_FillValue``, ``nodata`` or
    ``missing_value`` attribute is recorded in :attr:`Source.nodata` (zarr's
    ``fill_value`` is not: unwritten chunks read as it, usually a real 0).
AnnData ``.h5ad``
    ``X`` (or ``array="layers/NAME"``), dense or sparse CSR/CSC as anndata
    writes it, per gene (layout ``NF``, features named after ``var_names``),
    read through h5py in blocks of about ``batch_bytes`` and never densified
    (:mod:`~streamnorm.sources.h5ad`; the extra ``anndata``).
WebDataset ``.tar`` shards (``.tar``, ``.tar.gz``, ``.tgz``; :mod:`~streamnorm.sources.webdataset`)
    One shard per tar, streamed by :mod:`tarfile` (no extra package). Each
    sample (members sharing a key) contributes its one image member (decoded
    as image files are) or, with ``key=`` (``--key``), the member it names:
    an image (``"jpg"``) or an ``.npy`` array (``"npy"``, one sample each, with
    ``layout=``). Brace ranges (``train-{000000..000099}.tar``) are expanded
    for every source (:mod:`~streamnorm.sources._braces`).
Hugging Face ``datasets`` folders (``save_to_disk``; :mod:`~streamnorm.sources.hf`)
    The Arrow IPC files that ``state.json`` lists, one shard per file, read
    by pyarrow alone; columns as Parquet columns (``image_column=`` for an
    ``Image()`` feature). A ``DatasetDict`` is read one split folder at a time.

How the package is cut
----------------------
:mod:`~streamnorm.sources.base`
    The protocol: :class:`~streamnorm.sources.base.Format` (open -> describe
    -> cut into shards -> read batches or reduce to a partial) and the
    format-agnostic values :class:`Shard`, :class:`ShardResult`, :class:`Source`.
:mod:`~streamnorm.sources.registry`
    Which format a file is (suffix, or magic bytes) and :func:`open_source`.
:mod:`~streamnorm.sources.parquet`, :mod:`~streamnorm.sources.images`, :mod:`~streamnorm.sources.npy`,
:mod:`~streamnorm.sources.arrays`
    The formats. :mod:`~streamnorm.sources._decode` decodes images for image
    files and Parquet image columns alike, TIFFs through
    :mod:`~streamnorm.sources.tiff`.

Adding a format is one module with a ``Format`` subclass and one
:func:`~streamnorm.sources.registry.register` call; the engine, checkpoints,
progress bars and the command line only ever talk to the protocol.

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

from ._decode import (
    IMAGE_FORMATS,
    IMAGE_MODES,
    IMAGE_STACK_BYTES,
    _luma16,
    decode_frames,
    decode_image,
    mixed_bit_depths,
)
from .arrays import HDF5_EXTRA, ZARR_EXTRA
from .base import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_IMAGES_PER_SHARD,
    DEFAULT_SHARD_BYTES,
    BadRecordError,
    FileInfo,
    Format,
    OpenRequest,
    ReadOptions,
    Shard,
    ShardResult,
    Source,
    SourceError,
    combine_parts,
    concat_features,
    select_features,
    shard_digest,
)
from .images import IMAGE_SUFFIXES
from .npy import NPY_SUFFIXES
from .parquet import PARQUET_SUFFIXES, _arrow_to_numpy
from .registry import (
    formats_read,
    get_format,
    kinds,
    open_source,
    register,
    resolve_files,
    unregister,
)
from .tiff import TIFF_EXTRA

#: Names of the registered formats.
KINDS = kinds()

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_IMAGES_PER_SHARD",
    "DEFAULT_SHARD_BYTES",
    "IMAGE_FORMATS",
    "IMAGE_MODES",
    "IMAGE_STACK_BYTES",
    "IMAGE_SUFFIXES",
    "KINDS",
    "NPY_SUFFIXES",
    "PARQUET_SUFFIXES",
    "BadRecordError",
    "HDF5_EXTRA",
    "FileInfo",
    "Format",
    "OpenRequest",
    "ReadOptions",
    "Shard",
    "ShardResult",
    "Source",
    "SourceError",
    "TIFF_EXTRA",
    "ZARR_EXTRA",
    "_arrow_to_numpy",
    "_luma16",
    "combine_parts",
    "concat_features",
    "decode_frames",
    "decode_image",
    "formats_read",
    "get_format",
    "mixed_bit_depths",
    "open_source",
    "register",
    "resolve_files",
    "select_features",
    "shard_digest",
    "unregister",
]
