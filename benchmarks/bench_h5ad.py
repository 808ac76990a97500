"""AnnData .h5ad source: speed against plain h5py block reads, and peak memory of `streamnorm compute`.

Writes (with anndata) a sparse CSR ``X`` of ``--cells`` x ``--genes`` float32
values at ``--sparsity`` (default: the issue's 200,000 x 2,000 at 97%, 1.6 GB if
dense) into a temporary folder, then

1. times the plain read of the same data with h5py (``indptr`` once, then the
   ``data``/``indices`` slices of row blocks of the same size the source reads)
   against streamnorm's source reducing it (one worker, in this process), best of
   ``--repeats``; target <= 1.2x;
2. runs a fresh ``python -m streamnorm compute FILE`` subprocess and reads its
   peak RSS from ``os.wait4``; target: below a quarter of the dense size.

    python benchmarks/bench_h5ad.py             # issue size (~1 minute on 2 cores)
    python benchmarks/bench_h5ad.py --quick     # 20,000 cells (CI size)

Prints a Markdown table and writes ``benchmarks/results/h5ad[-quick].md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import streamnorm as sn
from streamnorm import engine
from streamnorm.sources import DEFAULT_BATCH_BYTES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_cpu  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SRC = str(Path(__file__).resolve().parents[1] / "src")
TARGET_RATIO = 1.2
TARGET_MEMORY_FRACTION = 0.25


def write_file(path: Path, cells: int, genes: int, sparsity: float, seed: int = 0) -> int:
    """A CSR .h5ad written by anndata, built in row blocks (never dense); returns nnz."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    per_row = rng.binomial(genes, 1.0 - sparsity, cells)
    indptr = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
    indices = np.empty(int(indptr[-1]), np.int32)
    for r in range(cells):  # sorted distinct genes per cell, as scanpy/anndata write them
        indices[indptr[r]:indptr[r + 1]] = np.sort(rng.choice(genes, per_row[r], replace=False))
    data = np.log1p(rng.poisson(3.0, indices.size) + 1).astype(np.float32)
    x = sp.csr_matrix((data, indices, indptr), shape=(cells, genes))
    adata = ad.AnnData(X=x, var=pd.DataFrame(index=[f"gene{i}" for i in range(genes)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(path)
    return int(indptr[-1])


def plain_h5py(path: Path, batch_bytes: int) -> float:
    """Seconds to read every row block's data and indices with h5py alone."""
    import h5py

    start = time.perf_counter()
    with h5py.File(path, "r") as f:
        g = f["X"]
        indptr = g["indptr"][()]
        entry = g["data"].dtype.itemsize + g["indices"].dtype.itemsize
        step = max(1, batch_bytes // entry)
        lo = 0
        while lo < len(indptr) - 1:
            hi = int(np.searchsorted(indptr, indptr[lo] + step, side="right")) - 1
            hi = max(hi, lo + 1)
            p0, p1 = int(indptr[lo]), int(indptr[hi])
            g["data"][p0:p1]
            g["indices"][p0:p1]
            lo = hi
    return time.perf_counter() - start


def source_seconds(path: Path) -> float:
    start = time.perf_counter()
    engine.compute([path], workers=1)
    return time.perf_counter() - start


# The child reports its own VmHWM (peak RSS of its address space since exec): a forked
# child's ru_maxrss starts at its parent's RSS, which here holds the generated matrix.
_CHILD = ("import sys\nfrom streamnorm.cli import main\nrc = main(sys.argv[1:])\n"
          "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
          "print(int(hwm.split()[1]) * 1024, file=sys.stderr)\nsys.exit(rc)\n")


def peak_rss(path: Path, store: Path) -> tuple[int, float]:
    """Peak RSS in bytes and wall seconds of a fresh `streamnorm compute` of ``path``."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _CHILD, "compute", str(path), "--store", str(store),
                          "--split", "train", "--no-progress", "--overwrite"], env=env,
                         capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"streamnorm compute failed: {res.stderr}")
    return int(res.stderr.strip().splitlines()[-1]), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 cells (CI)")
    parser.add_argument("--cells", type=int, default=None)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--sparsity", type=float, default=0.97)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cells = args.cells or (20_000 if args.quick else 200_000)
    import h5py
    import scipy

    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cells.h5ad"
        t0 = time.perf_counter()
        nnz = write_file(path, cells, args.genes, args.sparsity)
        write_s = time.perf_counter() - t0
        source_seconds(path)  # compile the kernels once, outside the timings
        plain = min(plain_h5py(path, DEFAULT_BATCH_BYTES) for _ in range(args.repeats))
        ours = min(source_seconds(path) for _ in range(args.repeats))
        rss, cli_s = peak_rss(path, Path(tmp) / "store")
        file_bytes = path.stat().st_size
    dense_bytes = cells * args.genes * 4
    meta = {
        "command": "python benchmarks/bench_h5ad.py" + (" --quick" if args.quick else ""),
        "machine": (f"{describe_cpu()}, Python {platform.python_version()}, h5py {h5py.__version__}, "
                    f"scipy {scipy.__version__}, numpy {np.__version__}"),
        "streamnorm": sn.__version__,
        "load_average": [round(before, 2), round(os.getloadavg()[0], 2)],
        "cells": cells, "genes": args.genes, "sparsity": args.sparsity, "nnz": nnz,
        "file_bytes": file_bytes, "dense_float32_bytes": dense_bytes, "write_seconds": round(write_s, 2),
    }
    rows = {
        "plain_h5py_s": round(plain, 3), "streamnorm_s": round(ours, 3), "ratio": round(ours / plain, 3),
        "target_ratio": TARGET_RATIO, "cli_peak_rss_bytes": rss, "cli_seconds": round(cli_s, 2),
        "rss_fraction_of_dense": round(rss / dense_bytes, 4), "target_fraction": TARGET_MEMORY_FRACTION,
    }
    text = markdown(meta, rows)
    print(text)
    name = "h5ad-quick" if args.quick else "h5ad"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


def markdown(meta: dict, rows: dict) -> str:
    mib = 2**20
    return "\n".join([
        f"# .h5ad source: {meta['cells']:,} cells x {meta['genes']:,} genes, {meta['sparsity']:.0%} sparse "
        f"(CSR float32, {meta['nnz']:,} stored values)",
        "",
        f"Machine: {meta['machine']}; load average {meta['load_average'][0]} -> {meta['load_average'][1]}. "
        f"`{meta['command']}`, streamnorm {meta['streamnorm']}.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| plain h5py block reads (s) | {rows['plain_h5py_s']} | |",
        f"| streamnorm source, 1 worker (s) | {rows['streamnorm_s']} | |",
        f"| ratio | {rows['ratio']}x | <= {rows['target_ratio']}x |",
        f"| `streamnorm compute` peak RSS (MiB) | {rows['cli_peak_rss_bytes'] / mib:.0f} | "
        f"< {meta['dense_float32_bytes'] * rows['target_fraction'] / mib:.0f} |",
        f"| peak RSS / dense float32 size ({meta['dense_float32_bytes'] / mib:.0f} MiB) | "
        f"{rows['rss_fraction_of_dense']:.1%} | < {rows['target_fraction']:.0%} |",
        f"| `streamnorm compute` wall time (s) | {rows['cli_seconds']} | |",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
