"""WebDataset shards and Hugging Face ``datasets`` folders: streamnorm vs the plain read.

WebDataset: ``--shards`` tar shards of ``--per-shard`` PNG images (64x64 RGB),
written by ``webdataset.TarWriter``, are reduced by ``streamnorm.engine.compute``
(2 worker processes) and, as the baseline, only read and decoded by
``tarfile`` + Pillow in 2 processes (one shard per task), computing nothing.

Hugging Face: a ``Dataset.save_to_disk`` folder (``--rows`` rows of 16 float32
columns, 4 Arrow files) is reduced by streamnorm (2 workers) and, as the
baselines, read into numpy by pyarrow (memory-mapped ``open_stream`` +
``to_numpy`` per column) and by ``datasets.load_from_disk(...).with_format("numpy")`` (both zero-copy reads of
memory-mapped float32: no arithmetic), and by the pyarrow read plus numpy's
mean, var, min and max per column (the same statistics, single-threaded).

WebDataset runs include the start of the engine's 2 spawned worker processes
(about 1-2 s of imports), so small runs show more than the per-image cost.

Same process, same 2 cores, files in the page cache (one untimed warm-up each);
median of ``--repeat`` runs. Results: ``benchmarks/results/wds_hf.{md,json}``.

Usage: ``python benchmarks/bench_wds_hf.py [--shards 8] [--per-shard 1000] [--rows 2000000]``
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _machine import describe_cpu  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WORKERS = 2


def write_wds(root: Path, shards: int, per_shard: int) -> list[str]:
    import webdataset as wds

    rng = np.random.default_rng(0)
    paths = []
    for s in range(shards):
        path = str(root / f"train-{s:04d}.tar")
        with wds.TarWriter(path) as w:
            for i in range(per_shard):
                im = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                w.write({"__key__": f"{s:04d}_{i:06d}", "png": im, "cls": i % 10})
        paths.append(path)
    return paths


def _decode_shard(path: str) -> int:
    from PIL import Image

    n = 0
    with tarfile.open(path, mode="r|*") as tar:
        for info in tar:
            if info.name.endswith(".png"):
                with Image.open(io.BytesIO(tar.extractfile(info).read())) as im:
                    np.asarray(im.convert("RGB"))
                n += 1
    return n


def plain_wds(paths: list[str]) -> None:
    with cf.ProcessPoolExecutor(WORKERS) as pool:
        assert sum(pool.map(_decode_shard, paths)) > 0


def write_hf(root: Path, rows: int) -> Path:
    import datasets

    datasets.disable_progress_bars()
    rng = np.random.default_rng(1)
    cols = {f"c{j}": rng.standard_normal(rows).astype(np.float32) for j in range(16)}
    folder = root / "hf"
    datasets.Dataset.from_dict(cols).save_to_disk(str(folder), num_shards=4)
    return folder


def plain_pyarrow(folder: Path) -> None:
    import pyarrow as pa

    for path in sorted(folder.glob("data-*.arrow")):
        with pa.memory_map(str(path)) as mm:
            table = pa.ipc.open_stream(mm).read_all()
            for col in table.columns:
                col.to_numpy()


def plain_numpy_stats(folder: Path) -> None:
    """The pyarrow read plus numpy's mean, var, min and max per column (the same statistics)."""
    import pyarrow as pa

    for path in sorted(folder.glob("data-*.arrow")):
        with pa.memory_map(str(path)) as mm:
            table = pa.ipc.open_stream(mm).read_all()
            for col in table.columns:
                x = col.to_numpy()
                x.mean(dtype=np.float64), x.var(dtype=np.float64), x.min(), x.max()


def plain_datasets(folder: Path) -> None:
    import datasets

    ds = datasets.load_from_disk(str(folder)).with_format("numpy")
    for name in ds.column_names:
        ds[name]


def timed(fn, repeat: int) -> float:
    fn()  # warm-up: page cache, imports, pools
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from streamnorm import engine

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_wds(root, args.shards, args.per_shard)
        ours = timed(lambda: engine.compute(paths, workers=WORKERS), args.repeat)
        base = timed(lambda: plain_wds(paths), args.repeat)
        n = args.shards * args.per_shard
        rows.append({"source": f"WebDataset ({n} PNG 64x64 in {args.shards} tars)",
                     "baseline": "tarfile + Pillow decode, 2 processes",
                     "streamnorm_s": ours, "baseline_s": base, "ratio": ours / base})
        folder = write_hf(root, args.rows)
        ours = timed(lambda: engine.compute([str(folder)], workers=WORKERS), args.repeat)
        for name, fn in (("pyarrow open_stream + to_numpy", plain_pyarrow),
                         ("datasets.load_from_disk, numpy format", plain_datasets),
                         ("pyarrow read + numpy mean/var/min/max", plain_numpy_stats)):
            base = timed(lambda fn=fn: fn(folder), args.repeat)
            rows.append({"source": f"HF datasets ({args.rows:,} rows x 16 float32, 4 files)",
                         "baseline": name, "streamnorm_s": ours, "baseline_s": base,
                         "ratio": ours / base})
    machine = describe_cpu()
    load = (load_before, os.getloadavg())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "wds_hf.json").write_text(json.dumps(
        {"machine": machine, "loadavg_before_after": load, "workers": WORKERS, "rows": rows},
        indent=2) + "\n")
    lines = [f"Machine: {machine}; load average {load[0][0]:.1f} before, {load[1][0]:.1f} after "
             f"(shared machine); {WORKERS} workers; median of {args.repeat}.", "",
             "| source | baseline | streamnorm (s) | baseline (s) | ratio |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['source']} | {r['baseline']} | {r['streamnorm_s']:.3f} | {r['baseline_s']:.3f} "
              f"| {r['ratio']:.2f}x |" for r in rows]
    (RESULTS / "wds_hf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
