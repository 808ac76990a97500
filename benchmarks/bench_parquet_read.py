"""Which pyarrow call reads a streamnorm Parquet shard fastest (read only, no statistics).

The engine reads every shard (a run of whole row groups of one file) on its
own worker thread, ``--workers`` shards at a time, with pyarrow's own threads
off (``read_threads=False``): each contender here does the same over the
files of ``bench_offline.py`` (generated there; default 2 GiB), one shard of
``shard_bytes`` per task, and only decodes the columns to Arrow arrays:

- ``ParquetFile.read_row_group`` per row group, memory_map / pre_buffer on or off, all
  columns at once or a few at a time (what streamnorm does: pieces of about 4 MiB);
- ``ParquetFile.iter_batches`` over the shard's row groups (one batch per row group);
- ``pyarrow.dataset`` fragments split by row group, ``to_table`` / ``to_batches``;
- and, as references that ignore the shards, ``pq.read_table`` and a threaded
  ``pyarrow.dataset`` scan of each whole file.

Runs are interleaved (median of ``--repeat``), files in the page cache.
Results go to ``benchmarks/results/parquet-read.{md,json}``.

Usage: ``python benchmarks/bench_parquet_read.py [--size-mb 2048] [--repeat 3] [--workers N]``
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_cpu  # noqa: E402
from bench_offline import _md_table, interleaved, make_parquet  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHARD_BYTES = 64 * 2**20


def shards_of(files: list[str]) -> list[tuple[str, list[int]]]:
    """(file, row groups) per shard, cut as the engine cuts them (about SHARD_BYTES compressed)."""
    import pyarrow.parquet as pq

    out = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        group: list[int] = []
        size = 0
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            size += sum(rg.column(j).total_compressed_size for j in range(rg.num_columns))
            group.append(i)
            if size >= SHARD_BYTES or i == meta.num_row_groups - 1:
                out.append((path, group))
                group, size = [], 0
    return out


def read_row_group(memory_map: bool, pre_buffer: bool, threads: bool = False):
    def read(shard: tuple[str, list[int]]) -> None:
        import pyarrow.parquet as pq

        path, groups = shard
        pf = pq.ParquetFile(path, memory_map=memory_map, pre_buffer=pre_buffer)
        for i in groups:
            pf.read_row_group(i, use_threads=threads)
        pf.close()
    return read


def read_pieces(memory_map: bool, piece_bytes: int):
    """Row group by row group, a few columns (about ``piece_bytes`` decoded) at a time."""
    def read(shard: tuple[str, list[int]]) -> None:
        import pyarrow.parquet as pq

        path, groups = shard
        pf = pq.ParquetFile(path, memory_map=memory_map, pre_buffer=False)
        names = pf.schema_arrow.names
        widest = max(sum(pf.metadata.row_group(i).column(j).total_uncompressed_size
                         for j in range(len(names))) for i in groups)
        width = max(1, min(len(names), len(names) * piece_bytes // max(widest, 1)))
        for i in groups:
            for first in range(0, len(names), width):
                pf.read_row_group(i, columns=names[first:first + width], use_threads=False)
        pf.close()
    return read


def iter_batches(memory_map: bool, pre_buffer: bool):
    def read(shard: tuple[str, list[int]]) -> None:
        import pyarrow.parquet as pq

        path, groups = shard
        pf = pq.ParquetFile(path, memory_map=memory_map, pre_buffer=pre_buffer)
        rows = max(pf.metadata.row_group(i).num_rows for i in groups)
        for _ in pf.iter_batches(batch_size=rows, row_groups=groups, use_threads=False):
            pass
        pf.close()
    return read


def dataset_fragments(batches: bool, pre_buffer: bool):
    def read(shard: tuple[str, list[int]]) -> None:
        import pyarrow.dataset as ds
        import pyarrow.fs

        path, groups = shard
        fmt = ds.ParquetFileFormat(
            default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=pre_buffer))
        fragment = fmt.make_fragment(path, pyarrow.fs.LocalFileSystem(), row_groups=groups)
        if batches:
            for _ in fragment.to_batches(use_threads=False, batch_size=1 << 20):
                pass
        else:
            fragment.to_table(use_threads=False)
    return read


def in_pool(read, shards: list, workers: int):
    def run() -> None:
        with cf.ThreadPoolExecutor(workers) as pool:
            list(pool.map(read, shards))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(),
                                                       "streamnorm-bench-offline"))
    args = parser.parse_args()
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    files = make_parquet(Path(args.data) / f"parquet-plain-{args.size_mb}mb", args.size_mb)
    shards = shards_of(files)
    w = args.workers
    contenders = {
        "read_row_group memory_map pre_buffer=False": read_row_group(True, False),
        "read_row_group memory_map, 1 MiB pieces of columns": read_pieces(True, 1 << 20),
        "read_row_group memory_map, 4 MiB pieces of columns (streamnorm)": read_pieces(True, 4 << 20),
        "read_row_group memory_map, 16 MiB pieces of columns": read_pieces(True, 16 << 20),
        "read_row_group memory_map pre_buffer=True": read_row_group(True, True),
        "read_row_group read() pre_buffer=False": read_row_group(False, False),
        "read_row_group read() pre_buffer=True": read_row_group(False, True),
        "read_row_group memory_map, use_threads": read_row_group(True, False, True),
        "iter_batches memory_map": iter_batches(True, False),
        "iter_batches pre_buffer": iter_batches(False, True),
        "dataset fragment to_table": dataset_fragments(False, False),
        "dataset fragment to_batches pre_buffer": dataset_fragments(True, True),
    }
    runs = {f"per shard, {w} threads: {name}": in_pool(fn, shards, w)
            for name, fn in contenders.items()}
    runs["whole files: pq.read_table, use_threads"] = lambda: [
        pq.read_table(f, use_threads=True) for f in files]
    runs["whole files: dataset scan, use_threads"] = lambda: [
        None for f in files for _ in ds.dataset(f, format="parquet").to_batches(use_threads=True)]
    load_before = os.getloadavg()[0]
    cpu: dict[str, float] = {}
    secs, _ = interleaved(runs, args.repeat, cpu)
    load_after = os.getloadavg()[0]
    best = min(secs.values())
    rows = [{"read": name, "seconds": round(t, 3), "MiB/s (values)": round(args.size_mb / t),
             "x fastest": round(t / best, 2), "CPU s": round(cpu[name], 2),
             "CPU x least": round(cpu[name] / min(cpu.values()), 2)}
            for name, t in sorted(secs.items(), key=lambda kv: kv[1])]
    meta = {"machine": f"{describe_cpu()}, {platform.system()}", "python": platform.python_version(),
            "pyarrow": pa.__version__, "memory_pool": pa.default_memory_pool().backend_name,
            "load_average_1min": [round(load_before, 2), round(load_after, 2)],
            "workers": w, "repeat": args.repeat, "parquet_mib_values": args.size_mb,
            "shards": len(shards), "files": len(files)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "parquet-read.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = [
        "# Reading a Parquet shard: which pyarrow call is fastest",
        "",
        (f"{meta['machine']}, Python {meta['python']}, pyarrow {meta['pyarrow']} "
         f"({meta['memory_pool']} pool); {args.size_mb} MiB of float32 values, {len(files)} files, "
         f"{len(shards)} shards of about {SHARD_BYTES >> 20} MiB, {w} worker threads; median of "
         f"{args.repeat} interleaved runs; load average (1 min) {load_before:.2f} before, "
         f"{load_after:.2f} after. `python benchmarks/bench_parquet_read.py`"),
        "",
        _md_table(rows),
        "",
    ]
    (RESULTS / "parquet-read.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
