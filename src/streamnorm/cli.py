"""``streamnorm``: compute, inspect, compare and plot per-split statistics.

Exit status: 0 on success, 2 for usage errors (bad options, bad split names,
bad layouts), 1 for data errors (missing or unreadable files, undecodable
images, no numeric columns, a split that exists already...), 3 when
``diff --fail-on-drift`` flags a feature. Errors are one line on stderr that
names the file and the problem, in terms of the command's flags; ``--debug``
adds the traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import tempfile
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from .errors import LayoutError, SplitNameError, StreamnormError

__all__ = ["build_parser", "main"]

PROG = "streamnorm"

EPILOG_MAIN = """\
examples:
  streamnorm demo
  streamnorm compute data/train/*.parquet --store stats/ --split train
  streamnorm compute images/train --store stats/ --split train --histogram
  streamnorm compute s3://bucket/ds/train/ --store s3://bucket/ds/stats --split train \\
      --engine dask --scheduler tcp://10.0.0.5:8786 --checkpoint s3://bucket/ckpt/train
  streamnorm show stats/ --split train
  streamnorm diff stats/ train test
  streamnorm plot stats/ --out stats.png

exit status: 0 ok, 1 data error (one line on stderr naming the file), 2 usage error,
3 drift found by diff --fail-on-drift.
"""

EPILOG_COMPUTE = """\
SOURCE is any mix of files, folders (searched recursively), globs and fsspec
URLs of one kind:
  Parquet      numeric columns -> layout NF, one feature per column
               (--columns to choose; --image-column for encoded images;
               one fixed-size-list / tensor column with --layout)
  images       PNG, JPEG, BMP, GIF, WebP, TIFF -> NHWC uint8; 16-bit PNG (gray,
               RGB, with alpha, interlaced) and 16-bit TIFF -> NHWC uint16,
               exactly (RGB: gray repeated, alpha dropped; --image-mode L for one
               luma channel, all for every stored channel); each page of a TIFF
               stack is an image (16-bit colour, stacks and more than four
               channels need: pip install 'streamnorm[tiff]'); ImageFolder class
               folders are fine; a folder mixing 8- and 16-bit images is an error
  .npy         memory-mapped; --layout says what it holds (default N or NF)
  Zarr, HDF5   Zarr stores (v2, v3; *.zarr folders or URLs) and .h5/.hdf5 files:
               --array NAME picks the array or dataset, --layout its axes
               (pip install 'streamnorm[zarr]' / 'streamnorm[hdf5]')
  WebDataset   .tar shards (brace ranges like train-{000000..000099}.tar): each
               sample's image -> NHWC, or its .npy member with --key npy and
               --layout (a leading N axis over the samples); --key jpg picks
               one member when a sample has several
  HF datasets  a Dataset.save_to_disk folder (for a DatasetDict, one split's
               folder): columns as Parquet's, --image-column for Image()

examples:
  streamnorm compute train.parquet --store stats/ --split train
  streamnorm compute 'data/part-*.parquet' --columns age,income --nan-policy omit \\
      --store stats/ --split train
  streamnorm compute imagenet/train --store stats/ --split train --histogram \\
      --workers 8 --checkpoint /tmp/ckpt-train --skip-bad
  streamnorm compute x_train.npy --layout NCHW --store stats/ --split train
  streamnorm compute gs://bucket/ds/ --store gs://bucket/stats --split train \\
      --engine dask --storage-options '{"token": "cloud"}'

A run with --checkpoint can be killed at any time; run the same command again to
resume: finished shards are not read again and the result is bit-identical.
"""


#: Exit status of ``streamnorm diff --fail-on-drift`` when a feature is flagged:
#: distinct from 1 (data error) and 2 (usage error), so a CI job can tell drift
#: from a broken command.
EXIT_DRIFT = 3

JSON_NOTE = ("--format json writes valid JSON: NaN as null, infinities as the strings "
             "\"inf\" and \"-inf\".")


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} "
                     f"(see {self.prog} --help)\n")


class UsageError(Exception):
    """An option value that is wrong whatever the data: exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _number(text: str) -> int | float:
    """An int when ``text`` is one (exact, e.g. -9999 or 65535), else a float; NaN refused."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value:
        raise argparse.ArgumentTypeError(
            "NaN equals no value; to skip NaNs use --nan-policy omit (they are counted in nan_count)")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _storage_options(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--storage-options must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--storage-options must be a JSON object, e.g. "
                                         "'{\"anon\": true}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``streamnorm`` argument parser."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of errors")
    parser = _Parser(
        prog=PROG,
        description="Exact one-pass dataset statistics per split, stored as Parquet.",
        epilog=EPILOG_MAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[debug],
    )
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"streamnorm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    c = sub.add_parser(
        "compute", parents=[debug], help="compute the statistics of one split and store them",
        description="Compute the statistics of SOURCE and save them as split NAME of the "
                    "store at ROOT (ROOT/split=NAME/stats.parquet).",
        epilog=EPILOG_COMPUTE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="Parquet/image/.npy files, folders, globs or fsspec URLs")
    c.add_argument("--store", required=True, metavar="ROOT", help="store root (folder or URL)")
    c.add_argument("--split", required=True, metavar="NAME", help="split name, e.g. train")
    c.add_argument("--layout", metavar="L",
                   help="what the data holds: NCHW, NHWC, NF... (.npy and tensor columns)")
    c.add_argument("--columns", metavar="a,b",
                   help="Parquet columns to use (default: every numeric column)")
    c.add_argument("--image-column", metavar="COL",
                   help="Parquet column of encoded images (PNG, JPEG...)")
    c.add_argument("--array", metavar="NAME",
                   help="the array or matrix to read in a file or store of many: a Zarr array or HDF5 "
                        "dataset by its path (group/x), or X (default) / layers/NAME of an .h5ad")
    c.add_argument("--key", metavar="EXT",
                   help="WebDataset: the member of each sample to read, e.g. jpg or npy "
                        "(default: its one image)")
    c.add_argument("--image-mode", choices=("RGB", "L", "all"), default="RGB",
                   help="decode images as RGB (default), L (one luma channel) or all "
                        "(every channel as stored, e.g. multispectral TIFF)")
    c.add_argument("--histogram", action="store_true",
                   help="keep each feature's distribution for quantiles, median, IQR and KS "
                        "distances: exact counts per value for bool/8/16-bit integers, a log grid "
                        "within relative 1e-3 for every other dtype")
    c.add_argument("--nan-policy", choices=("raise", "omit", "propagate"), default="raise",
                   help="NaN/inf and Parquet nulls: raise (default), omit (skip and count), "
                        "propagate")
    c.add_argument("--ignore-value", type=_number, metavar="V",
                   help="skip values equal to V (a nodata or padding value); they are counted "
                        "in masked_count")
    c.add_argument("--engine", choices=("local", "dask"), default="local",
                   help="local (default) or dask")
    c.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler, e.g. tcp://host:8786 (default: a local cluster)")
    c.add_argument("--workers", type=_positive_int, metavar="N",
                   help="parallel workers (default: number of CPUs)")
    c.add_argument("--checkpoint", metavar="DIR",
                   help="keep finished shards here; rerun the same command to resume")
    c.add_argument("--overwrite", action="store_true", help="replace the split if it exists")
    c.add_argument("--skip-bad", action="store_true",
                   help="skip images that fail to decode (and report them) instead of stopping")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--storage-options", type=_storage_options, default=None, metavar="JSON",
                   help="fsspec options for every URL (sources, store, checkpoint)")
    c.set_defaults(func=_cmd_compute)

    s = sub.add_parser(
        "show", parents=[debug], help="print the statistics of one or every split",
        description="Print per-feature count, mean, std, min, max and nan_count (and "
                    "quantiles when a histogram exists).",
        epilog="examples:\n  streamnorm show stats/\n  streamnorm show stats/ --split train "
               "--format json\n\nNumbers are printed in full (the shortest text that reads "
               "back to the same float64).\n" + JSON_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("root", metavar="ROOT")
    s.add_argument("--split", metavar="NAME", help="one split (default: all)")
    s.add_argument("--format", choices=("table", "json", "csv"), default="table")
    s.add_argument("--storage-options", type=_storage_options, default=None, metavar="JSON")
    s.set_defaults(func=_cmd_show)

    d = sub.add_parser(
        "diff", parents=[debug], help="compare two splits feature by feature",
        description="Per feature: standardized mean difference (SMD), std ratio and, with "
                    "histograms, the KS distance of OTHER against BASE. Features beyond the "
                    "threshold are flagged: |SMD| > T, std ratio outside [1/(1+T), 1+T], "
                    "KS > T.",
        epilog="examples:\n  streamnorm diff stats/ train test\n"
               "  streamnorm diff stats/ train val --threshold 0.2 --format json\n"
               "  streamnorm diff stats/ train test --format csv > drift.csv\n"
               "  streamnorm diff stats/ train test --fail-on-drift   # in CI\n\n"
               f"exit status: 0 ok, {EXIT_DRIFT} features flagged (only with --fail-on-drift), "
               "1 data error, 2 usage error.\n" + JSON_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("root", metavar="ROOT")
    d.add_argument("base", metavar="BASE")
    d.add_argument("other", metavar="OTHER")
    d.add_argument("--threshold", type=_positive_float, default=0.1, metavar="T",
                   help="flag threshold (default 0.1)")
    d.add_argument("--format", choices=("table", "json", "csv"), default="table")
    d.add_argument("--fail-on-drift", action="store_true",
                   help=f"exit with status {EXIT_DRIFT} when a feature is flagged (the report "
                        f"is printed as usual); for CI jobs")
    d.add_argument("--storage-options", type=_storage_options, default=None, metavar="JSON")
    d.set_defaults(func=_cmd_diff)

    p = sub.add_parser(
        "plot", parents=[debug], help="plot per-feature statistics of the splits to a PNG",
        description="Per-feature mean ± std and min/max for each split (and histograms where "
                    "present), as a PNG. Needs the plot extra: pip install 'streamnorm[plot]'.",
        epilog="examples:\n  streamnorm plot stats/ --out stats.png\n"
               "  streamnorm plot stats/ --split train --out train.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--split", metavar="NAME", action="append",
                   help="split to plot (repeatable; default: all)")
    p.add_argument("--storage-options", type=_storage_options, default=None, metavar="JSON")
    p.set_defaults(func=_cmd_plot)

    m = sub.add_parser(
        "demo", parents=[debug], help="run the whole workflow on a generated dataset",
        description="Generate a small image dataset and a tabular Parquet file with "
                    "train/val/test splits, compute and store their statistics, show and diff "
                    "them, and run one DeviceLoader epoch on the images.",
        epilog="example:\n  streamnorm demo --workdir /tmp/sn-demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("--workdir", metavar="DIR", help="where to write (default: a new temp dir)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")
    m.set_defaults(func=_cmd_demo)
    return parser


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _count(n: int, noun: str) -> str:
    """``"1 feature"``, ``"3 features"``."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _progress(args: argparse.Namespace) -> bool | None:
    # None: tqdm shows the bar only when stderr is a terminal.
    return False if args.no_progress else None


def _check_split(name: str) -> str:
    from .store import check_split_name

    try:
        return check_split_name(name)
    except SplitNameError as exc:
        raise UsageError(str(exc)) from None


def _missing_folders(fs: Any, path: str) -> list[str]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while path and not fs.exists(path):
        missing.append(path)
        parent = path.rsplit("/", 1)[0] if "/" in path.strip("/") else ""
        if parent == path:
            break
        path = parent
    return missing


def _check_writable(root: str, storage_options: Any) -> None:
    """Fail before the pass, not after it: write and remove a probe file at ``root``.

    Folders the probe had to create are removed again, so a run that fails
    later (bad data) leaves nothing behind.
    """
    import uuid

    from .fsutil import is_local, resolve_url, write_bytes_atomic

    fs, path = resolve_url(root, storage_options)
    # Object stores have no folders to make (and makedirs could create a
    # bucket): the probe is written exactly as the statistics will be.
    created = _missing_folders(fs, path) if is_local(fs) else []
    probe = f"{path}/_streamnorm-write-check-{uuid.uuid4().hex}"
    try:
        if is_local(fs):
            fs.makedirs(path, exist_ok=True)
        write_bytes_atomic(fs, probe, b"", overwrite=True)
        fs.rm(probe)
    except (OSError, NotImplementedError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
        raise StreamnormError(
            f"{root}: cannot write to the store ({reason}); nothing was computed: fix the "
            f"permissions or pass another --store"
        ) from exc
    finally:
        for folder in created:  # deepest first; only the empty folders made above
            try:
                if fs.exists(folder) and not fs.ls(folder):
                    fs.rmdir(folder)
            except OSError:
                pass


def _report_ignored(source: Any, ignore_value: Any = None) -> None:
    """Say on stderr what the sources held that was not read (nothing is left out silently)."""
    from .sources import formats_read

    if source.ignored_columns:
        cols = source.ignored_columns
        sys.stderr.write(
            f"{PROG}: note: left out {_count(len(cols), 'non-numeric column')}: "
            f"{', '.join(cols[:5])}{' ...' if len(cols) > 5 else ''} (choose columns with "
            f"--columns, or --image-column for encoded images)\n"
        )
    if source.skipped_value is not None:
        skipped = ("values equal to it are skipped (counted in masked_count)" if ignore_value is None
                   else f"--ignore-value {ignore_value} is skipped instead")
        sys.stderr.write(
            f"{PROG}: note: the array declares missing data {source.nodata!r} "
            f"({source.nodata_attribute}); {skipped}\n"
        )
    if source.ignored_files:
        files = source.ignored_files
        sys.stderr.write(
            f"{PROG}: note: ignored {_count(len(files), 'file')} of other types in the "
            f"folders: {', '.join(files[:3])}{' ...' if len(files) > 3 else ''} (read: "
            f"{formats_read()})\n"
        )


def _cmd_compute(args: argparse.Namespace) -> int:
    from . import engine
    from .layout import parse_layout
    from .store import StatsStore

    _check_split(args.split)
    if args.layout is not None:
        try:
            parse_layout(args.layout)
        except LayoutError as exc:
            raise UsageError(f"--layout: {exc}") from None
    if args.scheduler and args.engine != "dask":
        raise UsageError("--scheduler needs --engine dask")
    columns = None
    if args.columns is not None:
        columns = [c.strip() for c in args.columns.split(",")]
        if not all(columns):
            raise UsageError(f"--columns must be comma-separated column names, got {args.columns!r}")
    if columns and args.image_column:
        raise UsageError("pass --columns or --image-column, not both")
    so = args.storage_options
    store = StatsStore(args.store, so)
    if not args.overwrite and store.exists(args.split):
        raise StreamnormError(
            f"{store.url(args.split)}: the store already has split {args.split!r}; pass "
            f"--overwrite to replace it, or choose another --split"
        )
    _check_writable(args.store, so)
    run = engine.compute(
        args.sources, layout=args.layout, columns=columns, image_column=args.image_column,
        image_mode=args.image_mode, array=args.array, storage_options=so, histogram=args.histogram,
        nan_policy=args.nan_policy, skip_bad=args.skip_bad, ignore_value=args.ignore_value,
        engine=args.engine,
        workers=args.workers, scheduler=args.scheduler, checkpoint=args.checkpoint,
        checkpoint_storage_options=so, progress=_progress(args), key=args.key,
    )
    source = {**run.summary(), "inputs": [str(p) for p in args.sources]}
    path = store.save(run.stats, args.split, overwrite=args.overwrite, source=source)
    if run.skipped:
        shown = "; ".join(f"{w} ({r})" for w, r in run.skipped[:3])
        more = f"; and {len(run.skipped) - 3} more" if len(run.skipped) > 3 else ""
        noun = "undecodable image" if run.source.unit == "images" else "unreadable block"
        sys.stderr.write(f"{PROG}: skipped {_count(len(run.skipped), noun)}: "
                         f"{shown}{more}\n")
    _report_ignored(run.source, args.ignore_value)
    rate = run.nbytes / run.seconds if run.seconds > 0 else 0.0
    resumed = f", {run.resumed} from the checkpoint" if run.resumed else ""
    _out(
        f"saved split {args.split!r} to {path}: {_count(run.stats.n_features, 'feature')} "
        f"({run.stats.layout}, {run.stats.dtype}), {_count(run.rows, run.source.unit[:-1])}, "
        f"{_count(run.shards, 'shard')}{resumed}, {_size(run.nbytes)} in {run.seconds:.2f} s "
        f"({_size(rate)}/s)"
        + (f", {len(run.skipped)} skipped" if run.skipped else "")
    )
    return 0


_USUAL_ORDER = ("train", "training", "val", "valid", "validation", "dev", "test", "testing")


def _split_order(name: str) -> tuple[int, str]:
    """train, val, test first (in that order), then the rest by name."""
    lower = name.lower()
    return (_USUAL_ORDER.index(lower) if lower in _USUAL_ORDER else len(_USUAL_ORDER), name)


def _load_splits(root: str, splits: Sequence[str] | None, so: Any) -> dict[str, Any]:
    from .store import StatsStore

    for name in splits or ():
        _check_split(name)
    store = StatsStore(root, so)
    if not splits:
        splits = sorted(store.splits(), key=_split_order)
        if not splits:
            raise StreamnormError(
                f"{root}: no statistics found (expected {root.rstrip('/')}/split=<name>/"
                f"stats.parquet); create them with: streamnorm compute SOURCE --store {root} "
                f"--split NAME"
            )
    loaded = store.load_many(list(dict.fromkeys(splits)))  # diff A A: load A once
    return {name: loaded[name] for name in splits}


def _decoders(root: str, splits: Sequence[str], so: Any) -> dict[str, str]:
    """The image decoder stored with each split that has one (files of older versions have none)."""
    from .store import StatsStore

    store = StatsStore(root, so)
    out = {}
    for name in splits:
        source = store.metadata(name).get("source")
        if isinstance(source, dict) and isinstance(source.get("decoder"), str):
            out[name] = source["decoder"]
    return out


def _cmd_show(args: argparse.Namespace) -> int:
    from . import report

    loaded = _load_splits(args.root, [args.split] if args.split else None, args.storage_options)
    per_split = {name: report.summary_rows(stats) for name, stats in loaded.items()}
    # masked_count is shown when some split skipped values (masks, --ignore-value)
    masked = any(s.masked_count.any() for s in loaded.values())
    if masked:
        for name, rows in per_split.items():
            for row, count in zip(rows, loaded[name].masked_count.tolist()):
                row["masked_count"] = count
    decoders = _decoders(args.root, list(loaded), args.storage_options)
    if args.format == "json":
        _out(report.to_json({
            name: {"layout": loaded[name].layout, "dtype": loaded[name].dtype,
                   **({"decoder": decoders[name]} if name in decoders else {}),
                   "features": rows}
            for name, rows in per_split.items()
        }))
        return 0
    if args.format == "csv":
        columns = ["split", "feature", "count", "mean", "std", "min", "max", "nan_count"]
        if masked:
            columns.append("masked_count")
        if any(s.has_distribution for s in loaded.values()):
            columns += [q for q, _ in report.QUANTILES]
        rows = [{"split": name, **row} for name, rows in per_split.items() for row in rows]
        sys.stdout.write(report.to_csv(rows, columns))
        return 0
    for i, (name, rows) in enumerate(per_split.items()):
        stats = loaded[name]
        if i:
            _out()
        decoded = f", decoded by {decoders[name]}" if name in decoders else ""
        _out(f"split {name}: {_count(stats.n_features, 'feature')}, layout {stats.layout}, "
             f"dtype {stats.dtype}{decoded}")
        _out(report.format_table(rows))
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from . import report

    loaded = _load_splits(args.root, [args.base, args.other], args.storage_options)
    result = report.diff(loaded[args.base], loaded[args.other], threshold=args.threshold,
                         names=(args.base, args.other))
    status = EXIT_DRIFT if args.fail_on_drift and result.flagged else 0
    if args.format == "json":
        _out(report.to_json(result.to_dict()))
        return status
    if args.format == "csv":
        columns = ["feature", "mean_base", "mean_other", "smd", "std_base", "std_other",
                   "std_ratio", "ks", "flagged", "reasons"]
        rows = [dict(r, reasons=";".join(r["reasons"])) for r in result.rows]
        sys.stdout.write(report.to_csv(rows, columns))
        return status
    columns = ["feature", "mean_base", "mean_other", "smd", "std_ratio", "ks", "flagged",
               "reasons"]
    rows = [dict(r, mean_base=r["mean_base"], mean_other=r["mean_other"]) for r in result.rows]
    header = [c.replace("_base", f"({args.base})").replace("_other", f"({args.other})")
              for c in columns]
    renamed = [{h: r[c] for h, c in zip(header, columns)} for r in rows]
    _out(f"{args.other} vs {args.base}: standardized mean difference, std ratio, KS distance "
         f"(threshold {args.threshold:g})")
    _out(report.format_table(renamed, header))
    flagged = result.flagged
    _out(f"{len(flagged)} of {_count(len(rows), 'feature')} beyond the threshold"
         + (f": {', '.join(flagged[:20])}" + (" ..." if len(flagged) > 20 else "")
            if flagged else ""))
    return status


def _cmd_plot(args: argparse.Namespace) -> int:
    from . import report

    loaded = _load_splits(args.root, args.split, args.storage_options)
    data = report.plot(loaded, out=args.out, title=f"statistics in {args.root}",
                       storage_options=args.storage_options)
    _out(f"wrote {args.out} ({len(data):,} bytes, splits: {', '.join(loaded)})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    workdir = args.workdir or tempfile.mkdtemp(prefix="streamnorm-demo-")
    run_demo(workdir, progress=_progress(args), echo=_out)
    return 0


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


#: The library's messages name Python arguments and methods; on the command
#: line they name flags and commands. Keyword arguments become the flag of the
#: same name (``nan_policy='omit'`` -> ``--nan-policy omit``) when the parser
#: has that flag; methods become the command that does their job. Applied to
#: every error the command line prints, so each message is written once, in
#: the library.
_ARGUMENT = r"\b([a-z]+(?:_[a-z]+)*)"
_COMMANDS: tuple[tuple[str, str], ...] = (
    (r"\bsave it first with StatsStore\.save\b",
     "create it first with: streamnorm compute SOURCE --store ROOT --split NAME"),
    (r"\bwrite it (again )?with StatsStore\.save\b",
     r"write it \1with: streamnorm compute SOURCE --store ROOT --split NAME --overwrite"),
)


@functools.lru_cache(maxsize=1)
def _flag_names() -> frozenset[str]:
    """Every long option of every command, as Python names: ``{"nan_policy", ...}``."""
    names = set()
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            names.update(o[2:].replace("-", "_") for o in action.option_strings
                         if o.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return frozenset(names)


def speak_flags(message: str) -> str:
    """A library message as the command line says it: flags instead of arguments.

    Examples
    --------
    >>> speak_flags("pass histogram=False for other dtypes")
    'drop --histogram for other dtypes'
    >>> speak_flags("use nan_policy='omit' to skip them")
    'use --nan-policy omit to skip them'
    >>> speak_flags("ddof=True is not an integer")  # no such flag: left as it is
    'ddof=True is not an integer'
    """
    flags = _flag_names()

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    def swap(pattern: str, say: Any) -> None:
        nonlocal message
        message = re.sub(pattern, lambda m: say(m) if m[1] in flags else m[0], message)

    # a message that names the flag already: "nan_policy='omit' (--nan-policy omit)"
    message = re.sub(_ARGUMENT + r"=(['\"])([\w.-]+)\2 \((--[\w-]+ [\w.-]+)\)",
                     lambda m: m[4] if m[1] in flags else m[0], message)
    swap(r"\bpass " + _ARGUMENT[2:] + r"=False\b", lambda m: f"drop {flag(m[1])}")
    swap(_ARGUMENT + r"=False\b", lambda m: f"no {flag(m[1])}")
    swap(_ARGUMENT + r"=True\b", lambda m: flag(m[1]))
    swap(_ARGUMENT + r"=(['\"])([\w.-]+)\2", lambda m: f"{flag(m[1])} {m[3]}")
    for pattern, replacement in _COMMANDS:
        message = re.sub(pattern, replacement, message)
    return message


def _error_text(exc: StreamnormError) -> str:
    from .sources import BadRecordError

    text = speak_flags(_one_line(exc))
    if isinstance(exc, BadRecordError) and "--skip-bad" not in text:
        text += "; pass --skip-bad to skip undecodable images (they are counted and listed)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 1, 2, or 3 for drift).

    Examples
    --------
    >>> main(["show", "memory://streamnorm-doc-nothing"])   # the error goes to stderr
    1
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return int(args.func(args))
    except UsageError as exc:
        sub = f"{PROG} {args.command}"
        sys.stderr.write(f"{sub}: error: {_one_line(exc)} (see {sub} --help)\n")
        if debug:
            traceback.print_exc()
        return 2
    except StreamnormError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{PROG}: error: {_error_text(exc)}\n")
        return 1
    except OSError as exc:
        # Filesystem errors that escaped a more specific message (permissions,
        # disk full, network): still one line, with the path when known.
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        sys.stderr.write(f"{PROG}: error: {where}{exc.strerror or _one_line(exc)}\n")
        return 1
    except KeyboardInterrupt as exc:
        # engine.Interrupted says how many shards were kept and how to resume
        sys.stderr.write(f"{PROG}: {_one_line(exc) if str(exc) else 'interrupted'}\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
