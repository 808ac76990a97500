"""Per-split statistics stores: ``<root>/split=<split>/stats.parquet`` on any fsspec URL.

A :class:`StatsStore` keeps one statistics file per split (``train``,
``val``, ``fold-3``...) under a root that can be a local folder or any fsspec
URL (``file://``, ``memory://``, ``s3://`` with the ``s3`` extra, ``gs://``...).
The folder layout is Hive-style, so DuckDB, polars, pandas and Spark read a
whole store as one table with a ``split`` column::

    SELECT * FROM read_parquet('<root>/split=*/stats.parquet', hive_partitioning=true)

Writes are atomic (a reader sees the old file or the new one, never part of
one) and ``overwrite=False`` never replaces a split. Saved statistics merge
exactly, which makes cross-validation cheap: save one split per fold, and the
training statistics of fold ``k`` are the merge of every other fold.
The file format itself lives in :mod:`streamnorm.statsfile`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import IncompatibleStatsError, SplitNameError, StatsFileError, StreamnormError
from .fsutil import resolve_url, to_url, write_bytes_atomic
from .stats import Stats
from .statsfile import file_metadata, read_table, stats_from_bytes, stats_to_bytes, table_to_stats

__all__ = ["StatsStore", "check_split_name", "load_stats", "save_stats"]

_SPLIT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAX_SPLIT_LEN = 200


def check_split_name(split: Any) -> str:
    """Return ``split`` if it is a valid split name, else raise :class:`SplitNameError`.

    Valid names match ``[A-Za-z0-9][A-Za-z0-9._-]*`` (at most 200 characters):
    they can never climb out of the store (``..``), nest (``/``) or need
    quoting in a URL or a Hive partition path.

    Examples
    --------
    >>> check_split_name("fold-3")
    'fold-3'
    >>> try:
    ...     check_split_name("../etc")
    ... except SplitNameError as err:
    ...     print(type(err).__name__)
    SplitNameError
    """
    if not isinstance(split, str):
        raise SplitNameError(
            f"split names are strings such as 'train' or 'fold-0', got {type(split).__name__} "
            f"{split!r}"
        )
    if not _SPLIT_RE.fullmatch(split) or len(split) > _MAX_SPLIT_LEN:
        raise SplitNameError(
            f"invalid split name {split!r}: use letters, digits, '.', '_' and '-', starting "
            f"with a letter or digit, at most {_MAX_SPLIT_LEN} characters (e.g. 'train', "
            f"'fold-0')"
        )
    return split


def _split_list(splits: Any, what: str, unique: bool = True) -> list[str]:
    if isinstance(splits, str) or not isinstance(splits, Iterable):
        raise StreamnormError(f"{what} must be a list of split names, got {splits!r}")
    names = [check_split_name(s) for s in splits]
    if not unique:
        return list(dict.fromkeys(names))
    duplicates = sorted(s for s, n in Counter(names).items() if n > 1)
    if duplicates:
        raise StreamnormError(
            f"{what} names split(s) {duplicates} more than once; each split may enter a "
            f"merge only once"
        )
    return names


class StatsStore:
    """Statistics saved per split under one root, on any fsspec filesystem.

    Parameters
    ----------
    root : str or os.PathLike
        Local folder or URL (``"s3://bucket/ds/stats"``, ``"memory://x"``...).
        Nothing is created until the first :meth:`save`.
    storage_options : dict, optional
        fsspec options for the filesystem (credentials, ``client_kwargs``...).

    Notes
    -----
    Split ``name`` lives at ``<root>/split=<name>/stats.parquet``. Listing,
    loading and saving cost one filesystem call each, so stores with hundreds
    of splits (e.g. one per shard) stay cheap. Stores pickle by root and
    options, so they can be sent to worker processes.

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> x = np.arange(24, dtype=np.uint8).reshape(8, 3)
    >>> store = sn.StatsStore("memory://doc-store/stats")
    >>> _ = store.save(sn.compute_stats([x[:4]], layout="NF"), "train", overwrite=True)
    >>> _ = store.save(sn.compute_stats([x[4:]], layout="NF"), "val", overwrite=True)
    >>> store.splits()
    ['train', 'val']
    >>> store.load("train").mean.tolist()
    [4.5, 5.5, 6.5]
    >>> store.merge(["train", "val"]).equals(sn.compute_stats([x], layout="NF"))
    True
    """

    PARTITION_KEY = "split"
    FILE_NAME = "stats.parquet"

    def __init__(
        self, root: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
    ) -> None:
        self.root = os.fspath(root) if isinstance(root, os.PathLike) else root
        self._fs, self._path = resolve_url(root, storage_options)
        self.storage_options = dict(storage_options or {})

    # -- pickling: by root and options, never the live filesystem -------
    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["storage_options"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"StatsStore({self.root!r})"

    @property
    def fs(self) -> Any:
        """The fsspec filesystem the store lives on."""
        return self._fs

    # -- paths ---------------------------------------------------------
    def _file(self, split: str) -> str:
        return f"{self._path}/{self.PARTITION_KEY}={check_split_name(split)}/{self.FILE_NAME}"

    def url(self, split: str) -> str:
        """Where split ``split`` lives (a local path, or a URL for other filesystems).

        Examples
        --------
        >>> StatsStore("memory://doc-url").url("train")
        'memory:///doc-url/split=train/stats.parquet'
        """
        return to_url(self._fs, self._file(split))

    # -- writing -------------------------------------------------------
    def save(
        self, stats: Stats, split: str, overwrite: bool = False, source: Any = None
    ) -> str:
        """Save ``stats`` as split ``split``, atomically; return the path written.

        Parameters
        ----------
        stats : Stats
        split : str
            ``[A-Za-z0-9][A-Za-z0-9._-]*``; checked before anything is written.
        overwrite : bool
            Replace an existing split. By default an existing split is an error,
            so the statistics of one split are never silently replaced.
        source : JSON-serializable, optional
            What the statistics were computed from; stored as JSON metadata
            (see :func:`streamnorm.fsutil.describe_sources`).

        Returns
        -------
        str
            Path (local) or URL of the file written.

        Raises
        ------
        SplitNameError
            For an invalid split name.
        StatsFileError
            When the split exists and ``overwrite`` is False, or the write fails.
        StreamnormError
            When ``stats`` cannot be stored (inconsistent values, exact sums
            beyond 38 digits, ``source`` not JSON-serializable).
        """
        path = self._file(split)
        data = stats_to_bytes(stats, split=split, source=source)
        try:
            write_bytes_atomic(self._fs, path, data, overwrite=overwrite)
        except FileExistsError:
            raise StatsFileError(
                f"split {split!r} already exists at {to_url(self._fs, path)}; pass "
                f"overwrite=True to replace it, or save under another split name"
            ) from None
        except OSError as exc:
            raise StatsFileError(
                f"could not write split {split!r} to {to_url(self._fs, path)}: {exc}"
            ) from exc
        return to_url(self._fs, path)

    def delete(self, split: str, missing_ok: bool = False) -> None:
        """Remove split ``split`` (its whole ``split=<name>`` folder).

        Raises
        ------
        StatsFileError
            When the split does not exist and ``missing_ok`` is False.
        """
        folder = self._file(split).rsplit("/", 1)[0]
        self._fs.invalidate_cache(self._path)
        if not self._fs.exists(folder):
            if missing_ok:
                return
            raise self._missing(split)
        try:
            self._fs.rm(folder, recursive=True)
        except OSError as exc:
            raise StatsFileError(f"could not delete split {split!r}: {exc}") from exc
        self._fs.invalidate_cache(self._path)

    # -- reading -------------------------------------------------------
    def splits(self) -> list[str]:
        """Names of the saved splits, sorted.

        One listing of the root (recursive on object stores, which list by
        prefix); temporary files of writers in progress are never included.
        """
        self._fs.invalidate_cache(self._path)
        try:
            found = self._fs.find(self._path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StatsFileError(f"could not list the store at {self.root!r}: {exc}") from exc
        prefix = f"{self._fs._strip_protocol(self._path).rstrip('/')}/{self.PARTITION_KEY}="
        suffix = f"/{self.FILE_NAME}"
        names = []
        for path in found:
            path = self._fs._strip_protocol(path)
            if path.startswith(prefix) and path.endswith(suffix):
                name = path[len(prefix):-len(suffix)]
                if _SPLIT_RE.fullmatch(name):
                    names.append(name)
        return sorted(names)

    def exists(self, split: str) -> bool:
        """True when split ``split`` has been saved."""
        path = self._file(split)
        self._fs.invalidate_cache(path)
        return bool(self._fs.isfile(path))

    def __contains__(self, split: object) -> bool:
        return isinstance(split, str) and bool(_SPLIT_RE.fullmatch(split)) and self.exists(split)

    def _missing(self, split: str) -> StatsFileError:
        try:
            known = self.splits()
        except StreamnormError:
            known = []
        listed = ", ".join(repr(s) for s in known[:20]) + (" ..." if len(known) > 20 else "")
        return StatsFileError(
            f"no statistics for split {split!r}: {self.url(split)} does not exist "
            f"(saved splits: {listed or 'none'}); save it first with StatsStore.save"
        )

    def _read(self, split: str) -> bytes:
        path = self._file(split)
        try:
            return self._fs.cat_file(path)
        except FileNotFoundError:
            raise self._missing(split) from None
        except IsADirectoryError:
            raise StatsFileError(f"{self.url(split)} is a folder, not a statistics file") from None
        except OSError as exc:
            raise StatsFileError(f"could not read {self.url(split)}: {exc}") from exc

    def load(self, split: str) -> Stats:
        """Load split ``split``: the :class:`~streamnorm.Stats` saved, bit for bit.

        Raises
        ------
        SplitNameError
            For an invalid split name.
        StatsFileError
            When the split is missing, or its file is empty, truncated, not
            Parquet, of a newer format, or does not hold valid statistics;
            the message names the file.
        """
        return stats_from_bytes(self._read(split), where=self.url(split))

    def load_many(self, splits: Iterable[str]) -> dict[str, Stats]:
        """Load several splits at once (concurrently on object stores).

        Returns
        -------
        dict
            ``{split: Stats}`` in the order given.
        """
        names = _split_list(splits, "splits", unique=False)
        paths = [self._file(s) for s in names]
        try:
            blobs = self._fs.cat(paths, on_error="return") if paths else {}
        except OSError as exc:
            raise StatsFileError(f"could not read from {self.root!r}: {exc}") from exc
        out = {}
        for name, path in zip(names, paths):
            data = blobs.get(path, blobs.get(self._fs._strip_protocol(path)))
            if data is None or isinstance(data, FileNotFoundError):
                raise self._missing(name)
            if isinstance(data, BaseException):
                raise StatsFileError(f"could not read {self.url(name)}: {data}")
            out[name] = stats_from_bytes(data, where=self.url(name))
        return out

    def metadata(self, split: str) -> dict[str, Any]:
        """The metadata of split ``split``: format and library version, layout,
        dtype, split, ``created_at``, decoded ``source``, ``checksum`` and
        ``n_features``, from a file that passed every check of :meth:`load`.

        Examples
        --------
        >>> import numpy as np, streamnorm as sn
        >>> store = sn.StatsStore("memory://doc-meta")
        >>> _ = store.save(sn.compute_stats([np.zeros((2, 3))], layout="NF"), "train",
        ...                overwrite=True, source={"paths": ["a.parquet"]})
        >>> m = store.metadata("train")
        >>> m["layout"], m["dtype"], m["n_features"], m["source"]
        ('NF', 'float64', 3, {'paths': ['a.parquet']})
        """
        where = self.url(split)
        table = read_table(self._read(split), where)
        stats = table_to_stats(table, where)  # the metadata of a file that verifies only
        meta = file_metadata(table.schema, where)
        meta["n_features"] = stats.n_features
        return meta

    # -- merging -------------------------------------------------------
    def merge(self, splits: Sequence[str]) -> Stats:
        """Statistics of several splits together, merged from their saved states.

        Integer statistics merge exactly (the result is bit-identical to one
        pass over all the data); floats by Chan's update, a balanced tree in the order given.

        Raises
        ------
        StreamnormError
            For an empty list or a split named twice.
        IncompatibleStatsError
            When the splits differ in layout, features or histogram setting.

        Examples
        --------
        >>> import numpy as np, streamnorm as sn
        >>> store = sn.StatsStore("memory://doc-merge")
        >>> x = np.arange(30, dtype=np.uint8).reshape(10, 3)
        >>> for k in range(2):
        ...     _ = store.save(sn.compute_stats([x[k::2]], layout="NF"), f"part-{k}",
        ...                    overwrite=True)
        >>> store.merge(["part-0", "part-1"]).equals(sn.compute_stats([x], layout="NF"))
        True
        """
        names = _split_list(splits, "splits")
        if not names:
            raise StreamnormError("merge needs at least one split name")
        loaded = self.load_many(names)
        first = loaded[names[0]]
        for name in names[1:]:
            try:
                first._check_mergeable(loaded[name])
            except IncompatibleStatsError as exc:
                raise IncompatibleStatsError(
                    f"cannot merge split {name!r} with {names[0]!r}: {exc}"
                ) from None
        return Stats.merge_all(loaded[name] for name in names)

    def merge_except(self, held_out: str | Sequence[str], among: Sequence[str]) -> Stats:
        """Merge every split of ``among`` except ``held_out``: the training
        statistics of a cross-validation fold.

        ``among`` lists the folds explicitly so that splits such as ``test``
        can never leak into the training statistics.

        Parameters
        ----------
        held_out : str or sequence of str
            The validation fold(s); each must be in ``among``.
        among : sequence of str
            All folds.

        Examples
        --------
        >>> import numpy as np, streamnorm as sn
        >>> store = sn.StatsStore("memory://doc-cv")
        >>> x = np.arange(60, dtype=np.uint8).reshape(20, 3)
        >>> folds = [f"fold-{k}" for k in range(4)]
        >>> for k, fold in enumerate(folds):
        ...     _ = store.save(sn.compute_stats([x[k::4]], layout="NF"), fold, overwrite=True)
        >>> train = store.merge_except("fold-2", among=folds)
        >>> rows = np.concatenate([x[k::4] for k in (0, 1, 3)])
        >>> train.equals(sn.compute_stats([rows], layout="NF"))
        True
        """
        folds = _split_list(among, "among")
        held = _split_list([held_out] if isinstance(held_out, str) else held_out, "held_out")
        unknown = [h for h in held if h not in folds]
        if unknown:
            raise StreamnormError(
                f"held-out split(s) {unknown} are not among the folds {folds}; hold out one "
                f"of the listed folds"
            )
        rest = [f for f in folds if f not in held]
        if not rest:
            raise StreamnormError("nothing left to merge: every fold is held out")
        return self.merge(rest)

    def cross_validation(self, folds: Sequence[str]) -> dict[str, Stats]:
        """Training statistics for each fold of a k-fold split, loading each fold once.

        Returns
        -------
        dict
            ``{fold: statistics of every other fold}``; fit the normalizer of the
            model validated on ``fold`` on ``result[fold]``.

        Examples
        --------
        >>> import numpy as np, streamnorm as sn
        >>> store = sn.StatsStore("memory://doc-cv2")
        >>> x = np.arange(30, dtype=np.uint8).reshape(10, 3)
        >>> folds = ["fold-0", "fold-1", "fold-2"]
        >>> for k, fold in enumerate(folds):
        ...     _ = store.save(sn.compute_stats([x[k::3]], layout="NF"), fold, overwrite=True)
        >>> train = store.cross_validation(folds)
        >>> train["fold-1"].equals(store.merge(["fold-0", "fold-2"]))
        True
        """
        names = _split_list(folds, "folds")
        if len(names) < 2:
            raise StreamnormError(f"cross-validation needs at least two folds, got {names}")
        loaded = self.load_many(names)
        out = {}
        for held in names:
            out[held] = Stats.merge_all(loaded[f] for f in names if f != held)
        return out


def save_stats(
    stats: Stats,
    root: str | os.PathLike[str],
    split: str,
    overwrite: bool = False,
    source: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Save ``stats`` as split ``split`` of the store at ``root``; see :meth:`StatsStore.save`.

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> s = sn.compute_stats([np.ones((4, 2))], layout="NF")
    >>> sn.save_stats(s, "memory://doc-save", "train", overwrite=True)
    'memory:///doc-save/split=train/stats.parquet'
    >>> sn.load_stats("memory://doc-save", "train").equals(s)
    True
    """
    return StatsStore(root, storage_options).save(stats, split, overwrite=overwrite,
                                                  source=source)


def load_stats(
    root: str | os.PathLike[str], split: str, storage_options: Mapping[str, Any] | None = None
) -> Stats:
    """Load split ``split`` of the store at ``root``; see :meth:`StatsStore.load`."""
    return StatsStore(root, storage_options).load(split)
