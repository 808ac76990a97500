"""fsspec plumbing shared by every module that reads or writes URLs.

:func:`resolve_url` is the one place where a URL (or local path) and its
``storage_options`` become an fsspec filesystem and a path on it;
:func:`write_bytes_atomic` is the one place where a whole file is written so
that no reader ever sees half of it; :func:`describe_sources` records which
files a result came from (paths, sizes, modification times, ETags) as JSON-safe
values.
"""

from __future__ import annotations

import datetime as _dt
import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import StatsFileError, StreamnormError

__all__ = ["describe_sources", "is_local", "resolve_url", "to_url", "write_bytes_atomic"]


def resolve_url(
    url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> tuple[Any, str]:
    """Turn a URL or local path and its storage options into ``(filesystem, path)``.

    Any protocol fsspec knows works (``file://``, ``memory://``, ``s3://`` with
    the ``s3`` extra, ``gs://`` with gcsfs...). Trailing slashes are dropped.

    Parameters
    ----------
    url : str or os.PathLike
        Local path or fsspec URL.
    storage_options : mapping, optional
        Passed to the filesystem's constructor (credentials, endpoint...).

    Returns
    -------
    (fsspec.AbstractFileSystem, str)

    Raises
    ------
    StreamnormError
        For an empty URL, an unknown protocol or a protocol whose package is
        not installed (the message says what to install).

    Examples
    --------
    >>> fs, path = resolve_url("memory://stats/demo")
    >>> type(fs).__name__, path
    ('MemoryFileSystem', '/stats/demo')
    """
    import fsspec

    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url:
        raise StreamnormError(f"expected a non-empty path or URL, got {url!r}")
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise StreamnormError(
            f"storage_options must be a dict of filesystem options (or None), "
            f"got {type(storage_options).__name__}"
        )
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except ImportError as exc:
        hint = " (install it with: pip install 'streamnorm[s3]')" if url.startswith(
            ("s3://", "s3a://")) else ""
        raise StreamnormError(f"cannot open {url!r}: {exc}{hint}") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise StreamnormError(f"cannot open {url!r}: {exc}") from exc
    stripped = path.rstrip("/")
    return fs, stripped or path


def is_local(fs: Any) -> bool:
    """True for fsspec's local filesystem (where ``os`` calls apply to its paths)."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def to_url(fs: Any, path: str) -> str:
    """A string that reopens ``path``: the path itself when local, else a URL."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _fsync_dir(folder: str) -> None:
    # Makes the rename itself durable; not possible (nor needed) everywhere.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_local(path: str, data: Any, overwrite: bool) -> None:
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    # A dot-prefixed name that does not end in the final suffix: globs such as
    # split=*/stats.parquet and Arrow datasets (which skip "."-files) never
    # pick it up.
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                # link() never replaces an existing file: exclusive creation
                # of a complete file, with no window for a second writer.
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:
                # Filesystems without hard links: best effort.
                if os.path.exists(path):
                    raise FileExistsError(path) from None
                os.replace(tmp, path)
        _fsync_dir(folder)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def write_bytes_atomic(fs: Any, path: str, data: Any, overwrite: bool = True) -> None:
    """Write a whole file so that readers see the old file or the new one, never a part.

    Local filesystems: the bytes go to a hidden temporary file in the same
    folder (``.<name>.<uuid>.tmp``), are fsynced, then renamed over ``path``
    (``os.replace``), or hard-linked to it when ``overwrite`` is False so an
    existing file is never replaced. Any other filesystem (object stores,
    ``memory://``): one ``pipe_file`` call, i.e. a single PUT of the whole
    object, with ``mode="create"`` (S3 ``If-None-Match: *``) when ``overwrite``
    is False.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
    path : str
        Path on ``fs`` (as returned by :func:`resolve_url`).
    data : bytes-like
    overwrite : bool
        Replace an existing file (True) or raise ``FileExistsError`` (False).

    Raises
    ------
    FileExistsError
        When ``overwrite`` is False and ``path`` exists.
    OSError
        When the filesystem refuses the write.

    Examples
    --------
    >>> fs, path = resolve_url("memory://fsutil-doc/a.bin")
    >>> write_bytes_atomic(fs, path, b"abc")
    >>> fs.cat_file(path)
    b'abc'
    """
    if is_local(fs):
        _write_local(path, data, overwrite)
        return
    if overwrite:
        fs.pipe_file(path, bytes(data))
    else:
        if fs.exists(path):
            raise FileExistsError(path)
        fs.pipe_file(path, bytes(data), mode="create")
    fs.invalidate_cache(path)


def _iso(value: Any) -> str | None:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc).isoformat()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _dt.datetime.fromtimestamp(float(value), _dt.timezone.utc).isoformat()
    if isinstance(value, str) and value:
        return value
    return None


_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "mtime_ns", "created")
_ETAG_KEYS = ("ETag", "etag", "md5Hash", "md5")


def describe_sources(
    paths: Iterable[str | os.PathLike[str]], storage_options: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Describe input files as JSON-safe dicts: ``path``, ``size``, ``mtime``, ``etag``.

    Pass the result as ``source=`` to :meth:`~streamnorm.StatsStore.save` to
    record what the statistics were computed from. Keys the filesystem does
    not report are left out.

    Raises
    ------
    StatsFileError
        When a path does not exist or cannot be inspected.

    Examples
    --------
    >>> fs, path = resolve_url("memory://describe-doc/x.npy")
    >>> fs.pipe_file(path, b"1234")
    >>> [(d["path"], d["size"]) for d in describe_sources(["memory://describe-doc/x.npy"])]
    [('memory:///describe-doc/x.npy', 4)]
    """
    out: list[dict[str, Any]] = []
    for url in paths:
        fs, path = resolve_url(url, storage_options)
        try:
            info = fs.info(path)
        except (OSError, ValueError) as exc:
            raise StatsFileError(f"cannot describe source {os.fspath(url)!r}: {exc}") from exc
        entry: dict[str, Any] = {"path": to_url(fs, path)}
        if info.get("size") is not None:
            entry["size"] = int(info["size"])
        for key in _MTIME_KEYS:
            if info.get(key) is not None:
                stamp = _iso(info[key] / 1e9 if key == "mtime_ns" else info[key])
                if stamp is not None:
                    entry["mtime"] = stamp
                    break
        for key in _ETAG_KEYS:
            if info.get(key):
                entry["etag"] = str(info[key]).strip('"')
                break
        out.append(entry)
    return out
