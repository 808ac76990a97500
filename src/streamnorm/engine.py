"""The offline pass: shards -> partial statistics -> one deterministic merge.

:func:`compute` resolves a source (:func:`streamnorm.sources.open_source`),
reduces every shard to a partial :class:`~streamnorm.Stats` on an *engine*
and merges the partials:

``local`` (default)
    This machine. Parquet and ``.npy`` shards run on threads (pyarrow and the
    numba kernels release the GIL), and so do image files of 16 KiB or more
    on average: Pillow releases the GIL while it decodes, so their shards
    need no worker processes (whose start-up, about a second each for the
    interpreter, numba and its kernels, costs more than a pass over
    thousands of images). Smaller images spend most of their time in
    Python, holding the GIL: their shards run in a process pool (unless
    ``workers`` is left out and there are less than 128 MiB of them: then
    they are decoded inline), as do other sources that decode (WebDataset
    shards, Parquet image columns). ``workers=1`` runs inline.
``dask``
    Dask distributed: ``scheduler="tcp://host:port"`` (or a
    ``distributed.Client``) for an existing cluster, otherwise a
    ``LocalCluster`` (its HTTP server on a random local port, never :8787).
    Every task opens its own shard through fsspec/pyarrow with the storage
    options carried by the shard and returns a partial of a few KB.

Whatever the engine and the number of workers, the partials are merged as a
balanced binary tree over the shards sorted by id. Integer statistics are exact
anyway; float statistics come out bit-identical too, because every shard is
always cut, batched and merged the same way.

``checkpoint=DIR`` (any fsspec URL) makes a run resumable: each finished
shard's partial is saved (a :class:`~streamnorm.StatsStore` split named
``shard-<sha1 of the shard id>`` plus a small done marker) as soon as it
arrives, next to a ``manifest.json`` describing the run (inputs with sizes and
versions, read options, ``histogram``, ``nan_policy``, ``skip_bad``). A run
killed at any point and started again with the same arguments skips the done
shards and gives exactly the statistics of an uninterrupted run; a checkpoint
written with other arguments or other input files is refused.

Examples
--------
>>> import tempfile, numpy as np, pyarrow as pa, pyarrow.parquet as pq
>>> from streamnorm import engine
>>> tmp = tempfile.TemporaryDirectory(); d = tmp.name
>>> x = np.arange(1000, dtype=np.int32)
>>> pq.write_table(pa.table({"x": x}), f"{d}/a.parquet", row_group_size=100)
>>> run = engine.compute([d], workers=2, shard_bytes=1)
>>> run.shards, run.rows, run.stats.mean.tolist() == [x.mean()]
(10, 1000, True)
>>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ._masks import check_ignore_value
from .errors import StreamnormError
from .sources import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_IMAGES_PER_SHARD,
    DEFAULT_SHARD_BYTES,
    Shard,
    ShardResult,
    Source,
    open_source,
    shard_digest,
)
from .sources._jpeg import image_decoder
from .sources.base import json_number
from .stats import Stats

__all__ = [
    "ENGINES",
    "Checkpoint",
    "CheckpointError",
    "Interrupted",
    "RunResult",
    "TqdmProgress",
    "compute",
    "compute_shard",
    "merge_results",
    "tree_merge",
]

ENGINES = ("local", "dask")
#: Below this many input bytes, image sources are decoded in this process:
#: starting worker processes (interpreter, imports, kernel loading: about a
#: second) would cost more than decoding in parallel saves.
PROCESS_POOL_MIN_BYTES = 128 * 2**20
NAN_POLICIES = ("raise", "omit", "propagate")


class CheckpointError(StreamnormError):
    """A checkpoint folder belongs to another run, or cannot be read or written."""


class Interrupted(KeyboardInterrupt):
    """A pass stopped by Ctrl-C (SIGINT); says what was kept and how to go on.

    Attributes
    ----------
    done : int
        Shards finished (resumed ones included) when the pass stopped.
    total : int
        Shards of the source.
    checkpoint : str or None
        The checkpoint folder holding the finished shards, if any.
    """

    def __init__(self, done: int, total: int, checkpoint: str | None) -> None:
        self.done, self.total, self.checkpoint = done, total, checkpoint
        if checkpoint is not None:
            text = (f"interrupted: {done} of {total} shards are kept in the checkpoint "
                    f"{checkpoint}; run the same command again to resume")
        else:
            text = (f"interrupted after {done} of {total} shards; nothing was kept (pass "
                    f"--checkpoint DIR to make a run resumable)")
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.done, self.total, self.checkpoint))


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Outcome of :func:`compute`.

    Attributes
    ----------
    stats : Stats
        The merged statistics.
    source : Source
        The resolved source (kind, layout, shards).
    shards : int
        Number of shards.
    resumed : int
        Shards taken from the checkpoint instead of being read.
    rows : int
        Rows (tables, arrays) or images that entered the statistics.
    nbytes : int
        Bytes of input, as stored.
    skipped : tuple of (str, str)
        Records skipped under ``skip_bad`` (where, reason).
    seconds : float
        Wall time of the pass.
    """

    stats: Stats
    source: Source
    shards: int
    resumed: int
    rows: int
    nbytes: int
    skipped: tuple[tuple[str, str], ...]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """JSON-safe description of the run (stored with the statistics).

        Sources that decode images name the decoder (``"decoder"``: see
        :func:`~streamnorm.sources._jpeg.image_decoder`) of this process;
        Dask workers are expected to have the same packages.
        """
        return {
            "kind": self.source.kind,
            "layout": self.source.layout,
            "files": len({f.url for s in self.source.shards for f in s.files}),
            "shards": self.shards,
            "rows": self.rows,
            "bytes": self.nbytes,
            "skipped": len(self.skipped),
            # JPEG pixels, hence exact statistics and quantiles, depend on the decoder
            **({"decoder": image_decoder()} if self.source.decodes else {}),
            **({} if self.source.nodata is None else {
                "nodata": json_number(self.source.nodata), "nodata_attribute": self.source.nodata_attribute}),
        }


# ---------------------------------------------------------------------------
# shard work (runs anywhere)
# ---------------------------------------------------------------------------


def compute_shard(
    shard: Shard, histogram: bool = False, nan_policy: str = "raise", skip_bad: bool = False,
    read_threads: bool = True, ignore_value: float | int | None = None,
) -> ShardResult:
    """Reduce one shard; a module-level function so pools and Dask can ship it."""
    return shard.compute(histogram=histogram, nan_policy=nan_policy, skip_bad=skip_bad,
                         read_threads=read_threads, ignore_value=ignore_value)


def _fresh(result: ShardResult) -> ShardResult:
    """Re-validate statistics that crossed a process boundary (read-only arrays again)."""
    return dataclasses.replace(result, parts=tuple(dataclasses.replace(p) for p in result.parts))


def tree_merge(parts: Sequence[Stats]) -> Stats:
    """Merge statistics pairwise, level by level: ``((a+b)+(c+d))+e``.

    The tree depends only on the number of parts, so the same parts in the
    same order always give the same bits, wherever they were computed.

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> parts = [sn.compute_stats([np.full((2, 1), float(i))], layout="NF") for i in range(5)]
    >>> tree_merge(parts).mean.tolist()
    [2.0]
    """
    parts = list(parts)
    if not parts:
        raise StreamnormError("nothing to merge")
    return Stats.merge_all(parts)


def merge_results(
    results: Sequence[ShardResult], order: Sequence[str] | None = None
) -> Stats | None:
    """Merge shard results (in the order given) into one :class:`Stats`.

    Each feature group of the partials is merged with :func:`tree_merge`, so
    a table's integer columns stay exact. When shards group their features
    differently (a column stored as integers in one file and as floats in
    another), features are merged one by one, with the same tree and
    therefore the same bits. ``order`` sets the order of the features in the
    result (default: that of the first shard).
    """
    from .sources import combine_parts, select_features

    full = [r for r in results if r.parts]
    if not full:
        return None
    if order is None:
        order = [name for p in full[0].parts for name in p.feature_names]
    shapes = {tuple(p.feature_names for p in r.parts) for r in full}
    if len(shapes) == 1:
        groups = [tree_merge([r.parts[g] for r in full]) for g in range(len(full[0].parts))]
    else:
        per_feature: dict[str, list[Stats]] = {name: [] for name in order}
        for r in full:
            for part in r.parts:
                for i, name in enumerate(part.feature_names):
                    if name not in per_feature:
                        raise StreamnormError(
                            f"shard {r.shard_id} has a feature {name!r} that others lack"
                        )
                    per_feature[name].append(select_features(part, [i]))
        groups = [tree_merge(per_feature[name]) for name in order]
    return combine_parts(groups, order)


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------


class Checkpoint:
    """Partial statistics of finished shards, kept so that a run can resume.

    Layout of the folder::

        DIR/manifest.json                         what the run computes
        DIR/split=shard-<sha1>/stats.parquet      a shard's partial statistics
        DIR/split=shard-<sha1>.1/stats.parquet    its second feature group, if any
        DIR/done/<sha1>.json                      parts, rows, bytes, skipped records

    A shard counts as done once its marker exists; the marker is written
    (atomically) after its statistics, so a run killed in between redoes the
    shard. Nothing in the folder is pickled.

    Parameters
    ----------
    root : str
        Folder or fsspec URL.
    storage_options : mapping, optional
    """

    MANIFEST = "manifest.json"
    DONE = "done"
    FORMAT = "streamnorm.checkpoint"
    VERSION = 1

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None) -> None:
        from .fsutil import resolve_url
        from .store import StatsStore

        self.root = os.fspath(root)
        self._fs, self._path = resolve_url(self.root, storage_options)
        self.store = StatsStore(self.root, storage_options)

    def _write_json(self, path: str, value: Any) -> None:
        from .fsutil import write_bytes_atomic

        data = json.dumps(value, indent=1, sort_keys=True).encode("utf-8")
        try:
            if "/" in path:
                self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            write_bytes_atomic(self._fs, path, data, overwrite=True)
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint file {path}: {exc}") from exc

    def _read_json(self, path: str) -> Any:
        try:
            return json.loads(self._fs.cat_file(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint file {path} is unreadable ({exc}); delete the checkpoint folder "
                f"{self.root} to start over"
            ) from exc

    def open(self, run: Mapping[str, Any]) -> None:
        """Start or resume the run described by ``run`` (JSON-safe).

        Raises
        ------
        CheckpointError
            When the folder holds the checkpoint of a run with other arguments
            or other input files.
        """
        manifest_path = f"{self._path}/{self.MANIFEST}"
        manifest = self._read_json(manifest_path)
        wanted = {"format": self.FORMAT, "version": self.VERSION, "run": json_safe(run)}
        if manifest is None:
            if self._fs.exists(self._path) and self._fs.ls(self._path):
                raise CheckpointError(
                    f"checkpoint folder {self.root} is not empty and has no {self.MANIFEST}; "
                    f"point --checkpoint at an empty or new folder"
                )
            self._write_json(manifest_path, wanted)
            return
        if manifest.get("format") != self.FORMAT:
            raise CheckpointError(f"{self.root} is not a streamnorm checkpoint folder")
        if manifest != wanted:
            raise CheckpointError(
                f"checkpoint {self.root} was written by a run with different "
                f"{_first_difference(manifest.get('run', {}), wanted['run'])}; rerun with the "
                f"same arguments to resume, or use a new --checkpoint folder (or delete this one)"
            )

    def done(self, shards: Sequence[Shard]) -> dict[str, ShardResult]:
        """Results of the shards already finished, by shard id."""
        by_digest = {shard_digest(s.id): s for s in shards}
        folder = f"{self._path}/{self.DONE}"
        try:
            listed = self._fs.ls(folder, detail=False)
        except FileNotFoundError:
            return {}
        paths = [p for p in listed if p.rsplit("/", 1)[-1][:-5] in by_digest
                 and p.endswith(".json")]
        try:
            # one call: concurrent requests on object stores
            blobs = self._fs.cat(paths, on_error="return") if paths else {}
        except OSError as exc:
            raise CheckpointError(f"cannot read the checkpoint {self.root}: {exc}") from exc
        markers = {}
        for path, data in blobs.items():
            digest = path.rsplit("/", 1)[-1][:-5]
            if isinstance(data, BaseException):
                continue  # vanished or unreadable: the shard is redone
            try:
                marker = json.loads(data)
            except ValueError:
                continue  # cannot happen with atomic writes; redo the shard anyway
            if isinstance(marker, dict) and marker.get("shard") == by_digest[digest].id:
                markers[digest] = marker
        wanted = {d: _part_splits(d, int(m.get("parts", 0))) for d, m in markers.items()}
        present = {name for names in wanted.values() for name in names
                   if self.store.exists(name)}
        loaded = self.store.load_many(sorted(present))
        out = {}
        for digest, marker in markers.items():
            names = wanted[digest]
            if any(name not in present for name in names):
                continue  # statistics vanished: redo the shard
            out[marker["shard"]] = ShardResult(
                marker["shard"], tuple(loaded[name] for name in names), int(marker["rows"]),
                int(marker["nbytes"]),
                tuple((str(w), str(r)) for w, r in marker.get("skipped", [])),
            )
        return out

    def kept(self, shards: Sequence[Shard]) -> int:
        """How many of ``shards`` have their done marker (statistics not read)."""
        digests = {shard_digest(s.id) for s in shards}
        try:
            listed = self._fs.ls(f"{self._path}/{self.DONE}", detail=False)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise CheckpointError(f"cannot read the checkpoint {self.root}: {exc}") from exc
        names = {p.rsplit("/", 1)[-1] for p in listed}
        return sum(f"{d}.json" in names for d in digests)

    def record(self, result: ShardResult) -> None:
        """Save one finished shard: statistics first, then its done marker."""
        digest = shard_digest(result.shard_id)
        for name, part in zip(_part_splits(digest, len(result.parts)), result.parts):
            self.store.save(part, name, overwrite=True, source={"shard": result.shard_id})
        self._write_json(f"{self._path}/{self.DONE}/{digest}.json", {
            "shard": result.shard_id,
            "parts": len(result.parts),
            "rows": result.rows,
            "nbytes": result.nbytes,
            "skipped": [list(s) for s in result.skipped],
        })


def _part_splits(digest: str, n: int) -> list[str]:
    return [f"shard-{digest}" + (f".{k}" if k else "") for k in range(n)]


#: Up to this many input files, the manifest lists each one (so a refusal can
#: name the file that changed); beyond, it keeps a digest of them.
MANIFEST_MAX_FILES = 10_000


def run_description(source: Source, **options: Any) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: inputs, read options, options."""
    described = source.describe()
    shards = described.pop("shards")
    files = {f["path"]: f for shard in shards for f in shard["files"]}
    digest = hashlib.sha1(json.dumps(shards, sort_keys=True).encode()).hexdigest()
    return {
        "source": described,
        "shards": {"count": len(shards), "sha1": digest},
        "files": list(files.values()) if len(files) <= MANIFEST_MAX_FILES else len(files),
        **options,
    }


def json_safe(value: Any) -> Any:
    """Round-trip ``value`` through JSON (tuples become lists) for comparisons."""
    return json.loads(json.dumps(value, sort_keys=True))


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new), key=lambda k: (k in ("shards",), k))
        for key in keys:  # files before shards: name the file that changed
            if old.get(key) != new.get(key):
                if key == "files":
                    return _file_difference(old.get(key), new.get(key))
                if key == "shards":
                    return ("shards (the files are cut differently: other shard_bytes or "
                            "images_per_shard)")
                return _first_difference(old.get(key), new.get(key), f"{path}{key}.")
        return "arguments"
    name = path.rstrip(".") or "arguments"
    return f"{name} ({old!r} then, {new!r} now)"


def _file_difference(old: Any, new: Any) -> str:
    if not isinstance(old, list) or not isinstance(new, list):
        return "input files (their sizes or versions changed)"
    old_files = {f["path"]: f for f in old}
    new_files = {f["path"]: f for f in new}
    for path in sorted(set(old_files) | set(new_files)):
        if path not in new_files:
            return f"input files ({path} is gone)"
        if path not in old_files:
            return f"input files ({path} is new)"
        if old_files[path] != new_files[path]:
            return f"input files ({path} changed size or version)"
    return "input files"


# ---------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------


class TqdmProgress:
    """A tqdm bar over the input bytes (so its rate reads MB/s), with shards and rows.

    Parameters
    ----------
    enabled : bool or None
        ``None`` shows the bar only when stderr is a terminal.
    desc : str
    """

    def __init__(self, enabled: bool | None = None, desc: str = "streamnorm") -> None:
        self.enabled = enabled
        self.desc = desc
        self._bar: Any = None
        self._shards = 0
        self._total = 0
        self._rows = 0
        self._unit = "rows"

    def start(self, source: Source, resumed: Sequence[ShardResult]) -> None:
        from tqdm.auto import tqdm

        self._total = len(source.shards)
        self._unit = source.unit
        self._shards = len(resumed)
        self._rows = sum(r.rows for r in resumed)
        self._bar = tqdm(
            total=source.nbytes, initial=sum(r.nbytes for r in resumed), unit="B",
            unit_scale=True, unit_divisor=1024, desc=self.desc, dynamic_ncols=True,
            disable=(None if self.enabled is None else not self.enabled), leave=True,
        )
        self._postfix()

    def _postfix(self) -> None:
        self._bar.set_postfix_str(
            f"{self._shards}/{self._total} shards, {self._rows:,} {self._unit}", refresh=False
        )

    def update(self, result: ShardResult) -> None:
        self._shards += 1
        self._rows += result.rows
        self._postfix()
        self._bar.update(result.nbytes)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ---------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Processes started inside this block ignore SIGINT.

    Ctrl-C sends SIGINT to the whole process group: worker processes would
    each die with a traceback while the parent stops the pass in order. An
    ignored SIGINT is inherited through ``exec``, and Python leaves it
    ignored, so only this process sees it. The parent's own handler is back
    as soon as the block ends; a Ctrl-C pressed within the block (while a
    local cluster starts its workers: seconds) is lost and must be repeated.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be changed from the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_local(
    shards: Sequence[Shard], workers: int, processes: bool, kwargs: dict[str, Any],
    on_result: Callable[[ShardResult], None],
) -> None:
    if workers == 1 or len(shards) <= 1:
        for shard in shards:
            on_result(compute_shard(shard, **kwargs))
        return
    # One shard per worker at a time, each decoded on its own thread: on a
    # CPU-bound read this keeps every core busy with no hand-offs.
    kwargs = {**kwargs, "read_threads": False}
    import concurrent.futures as cf

    if processes:
        import multiprocessing

        # spawn, not fork: the parent has threads (pyarrow, numba) that a fork
        # would copy in an undefined state.
        pool: cf.Executor = cf.ProcessPoolExecutor(
            min(workers, len(shards)), mp_context=multiprocessing.get_context("spawn")
        )
    else:
        pool = cf.ThreadPoolExecutor(min(workers, len(shards)), thread_name_prefix="streamnorm")
    with pool:
        with _children_ignore_sigint():  # the process pool starts its workers on submit
            futures = [pool.submit(compute_shard, shard, **kwargs) for shard in shards]
        try:
            for future in cf.as_completed(futures):
                on_result(_fresh(future.result()) if processes else future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


class _LocalDask:
    """A Dask ``LocalCluster`` of worker processes, its client and its scratch folder.

    Workers and scheduler keep their files (locks, spilled data) in a new
    temporary folder instead of ``<tmp>/dask-scratch-space``; :meth:`close`
    stops the cluster and removes the folder.
    """

    def __init__(self, workers: int | None) -> None:
        import dask
        from distributed import Client, LocalCluster

        self.directory = tempfile.mkdtemp(prefix="streamnorm-dask-")
        try:
            # The scheduler takes its folder from the config, workers from the argument.
            with dask.config.set({"temporary-directory": self.directory}), \
                    _children_ignore_sigint():
                # No fixed port: the scheduler's HTTP server (dashboard) binds a
                # random local one (dashboard_address=None would still bind :8787).
                self.cluster = LocalCluster(
                    n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                    processes=True, dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
                    local_directory=self.directory,
                )
            self.client = Client(self.cluster, set_as_default=False)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def close(self) -> None:
        """Stop the client and the cluster, quietly, and remove the scratch folder."""
        # Tasks cancelled by an interrupt make the closing cluster log their
        # fate at ERROR level; the pass has said what happened already.
        quiet = logging.getLogger("distributed")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            with _children_ignore_sigint():  # and a second Ctrl-C cannot cut the cleanup short
                self.client.close()
                self.cluster.close()
        finally:
            quiet.setLevel(level)
            shutil.rmtree(self.directory, ignore_errors=True)


def _dask_client(scheduler: Any, workers: int | None,
                 timeout: str = "20s") -> tuple[Any, _LocalDask | None]:
    try:
        from distributed import Client
    except ImportError as exc:
        raise StreamnormError(
            "the dask engine needs Dask distributed: pip install 'streamnorm[dask]'"
        ) from exc
    if isinstance(scheduler, Client):
        return scheduler, None
    if scheduler:
        try:
            return Client(scheduler, timeout=timeout, set_as_default=False), None
        except (OSError, TimeoutError) as exc:
            raise StreamnormError(
                f"cannot reach the Dask scheduler at {scheduler} ({' '.join(str(exc).split())}); "
                f"check the address (tcp://host:port) and that the scheduler is running"
            ) from exc
    local = _LocalDask(workers)
    return local.client, local


class _SyncCancelRace(logging.Filter):
    """Drop tornado's report of a Ctrl-C that reached Dask's ``sync()`` too early.

    On KeyboardInterrupt, ``distributed.utils.sync`` schedules a ``cancel``
    callback that reads a variable bound only once the interrupted call has
    started; when it had not, the callback fails with a NameError and tornado
    logs it, traceback and all, under the one-line interruption message. The
    interruption itself is handled; only this report is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, NameError) and "sync.<locals>.cancel" in record.getMessage())


@contextlib.contextmanager
def _quiet_sync_cancel_race() -> Iterator[None]:
    """While the block runs, tornado does not report :class:`_SyncCancelRace`."""
    logger = logging.getLogger("tornado.application")
    race = _SyncCancelRace()
    logger.addFilter(race)
    try:
        yield
    finally:
        logger.removeFilter(race)


def _run_dask(
    shards: Sequence[Shard], workers: int | None, scheduler: Any, kwargs: dict[str, Any],
    on_result: Callable[[ShardResult], None],
) -> None:
    with _quiet_sync_cancel_race():
        _run_dask_client(shards, workers, scheduler, kwargs, on_result)


def _run_dask_client(
    shards: Sequence[Shard], workers: int | None, scheduler: Any, kwargs: dict[str, Any],
    on_result: Callable[[ShardResult], None],
) -> None:
    from distributed import as_completed

    client, local = _dask_client(scheduler, workers)
    try:
        futures = client.map(
            compute_shard, list(shards), pure=False,
            key=[f"streamnorm-shard-{shard_digest(s.id)}" for s in shards], **kwargs,
        )
        try:
            with client.as_current():  # as_completed looks for a current client
                for future in as_completed(futures):
                    result = future.result()
                    future.release()
                    on_result(_fresh(result))
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        if local is not None:
            local.close()


# ---------------------------------------------------------------------------
# the pass
# ---------------------------------------------------------------------------


def compute(
    paths: str | Sequence[str] | Source,
    *,
    layout: str | None = None,
    columns: Sequence[str] | None = None,
    image_column: str | None = None,
    image_mode: str = "RGB",
    storage_options: Mapping[str, Any] | None = None,
    histogram: bool = False,
    nan_policy: str = "raise",
    skip_bad: bool = False,
    ignore_value: float | int | None = None,
    engine: str = "local",
    workers: int | None = None,
    scheduler: Any = None,
    checkpoint: str | None = None,
    checkpoint_storage_options: Mapping[str, Any] | None = None,
    progress: bool | TqdmProgress | None = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    array: str | None = None,
    key: str | None = None,
) -> RunResult:
    """Statistics of Parquet files, image files or ``.npy`` arrays, in one pass.

    Parameters
    ----------
    paths : str, sequence of str, or Source
        Files, folders, globs or fsspec URLs (see :func:`~streamnorm.sources.open_source`),
        or a source opened already.
    layout, columns, image_column, image_mode, storage_options, shard_bytes,
    images_per_shard, batch_bytes, array, key
        Passed to :func:`~streamnorm.sources.open_source`.
    histogram : bool
        Exact 256-bin histograms (8-bit data: images, uint8/int8 columns).
    nan_policy : {"raise", "omit", "propagate"}
        Non-finite values and Parquet nulls (see :mod:`streamnorm.sources`).
    skip_bad : bool
        Skip (and report in :attr:`RunResult.skipped`) images that fail to
        decode instead of stopping.
    ignore_value : number, optional
        Values equal to it (a nodata or padding value) are skipped and counted
        in ``masked_count`` (see :class:`~streamnorm.StatsAccumulator`).
    engine : {"local", "dask"}
    workers : int, optional
        Local: threads or processes (default: CPU count; small image
        sources are then decoded inline). Dask: workers of the
        ``LocalCluster`` started when no ``scheduler`` is given.
    scheduler : str or distributed.Client, optional
        Address (``tcp://host:port``) or client of an existing Dask cluster.
    checkpoint : str, optional
        Folder or URL where finished shards are kept; a rerun with the same
        arguments resumes from it.
    progress : bool, TqdmProgress or None
        Show a progress bar on stderr (``None``: only on a terminal).

    Returns
    -------
    RunResult

    Raises
    ------
    StreamnormError
        Bad arguments, unreadable sources (:class:`~streamnorm.sources.SourceError`),
        undecodable images (:class:`~streamnorm.sources.BadRecordError`),
        non-finite values, a foreign checkpoint (:class:`CheckpointError`).
    """
    started = time.perf_counter()
    if engine not in ENGINES:
        raise StreamnormError(f"engine must be one of {ENGINES}, got {engine!r}")
    if nan_policy not in NAN_POLICIES:
        raise StreamnormError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise StreamnormError(f"workers must be a positive integer, got {workers!r}")
    if scheduler is not None and engine != "dask":
        raise StreamnormError("scheduler= is for engine='dask'; pass engine='dask' as well")
    if isinstance(paths, Source):
        source = paths
    else:
        source = open_source(
            paths, layout=layout, columns=columns, image_column=image_column,
            image_mode=image_mode, storage_options=storage_options, shard_bytes=shard_bytes,
            images_per_shard=images_per_shard, batch_bytes=batch_bytes, array=array, key=key,
        )
    kwargs = {"histogram": bool(histogram), "nan_policy": nan_policy, "skip_bad": bool(skip_bad)}
    if ignore_value is None:  # the array's declared missing data (ignore_value= overrides)
        ignore_value = source.skipped_value
    if ignore_value is not None:  # (absent otherwise: checkpoints of earlier runs still resume)
        kwargs["ignore_value"] = check_ignore_value(ignore_value)
    results: dict[str, ShardResult] = {}
    ckpt = None
    if checkpoint is not None:
        ckpt = Checkpoint(checkpoint, checkpoint_storage_options)
        ckpt.open(run_description(source, **kwargs))
        results.update(ckpt.done(source.shards))
    pending = [s for s in source.shards if s.id not in results]

    bar = progress if isinstance(progress, TqdmProgress) else (
        TqdmProgress(progress) if progress is not False else None)
    if bar is not None:
        bar.start(source, list(results.values()))

    def on_result(result: ShardResult) -> None:
        if ckpt is not None:
            ckpt.record(result)
        results[result.shard_id] = result
        if bar is not None:
            bar.update(result)

    resumed = len(source.shards) - len(pending)
    try:
        if pending:
            if engine == "dask":
                _run_dask(pending, workers, scheduler, kwargs, on_result)
            else:
                heavy = source.holds_gil
                n_workers = workers or os.cpu_count() or 1
                small = sum(s.nbytes for s in pending) < PROCESS_POOL_MIN_BYTES
                if heavy and small and workers is None:
                    n_workers = 1  # decoding holds the GIL; starting processes would cost more
                _run_local(pending, n_workers, heavy, kwargs, on_result)
    except KeyboardInterrupt:
        # A Ctrl-C can land after a shard's marker is written but before the
        # shard is counted here: the checkpoint itself says what is kept.
        kept = len(results) if ckpt is None else ckpt.kept(source.shards)
        raise Interrupted(kept, len(source.shards), checkpoint) from None
    finally:
        if bar is not None:
            bar.close()
    ordered = [results[s.id] for s in sorted(source.shards, key=lambda s: s.id)]
    source.check(results)
    stats = merge_results(ordered, source.feature_names)
    skipped = tuple(item for r in ordered for item in r.skipped)
    if stats is None:
        what = (f"all {len(skipped)} images failed to decode and were skipped"
                if skipped else "the sources hold no rows")
        raise StreamnormError(f"no data to compute statistics from: {what}")
    return RunResult(
        stats=stats,
        source=source,
        shards=len(source.shards),
        resumed=resumed,
        rows=sum(r.rows for r in ordered),
        nbytes=sum(r.nbytes for r in ordered),
        skipped=skipped,
        seconds=time.perf_counter() - started,
    )
