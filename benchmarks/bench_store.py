"""Save and load time of a StatsStore split: 3 features (images) and 20,000 features
(gene-expression scale), on a local folder and on ``memory://``.

Target: loading 20,000 features from a local store in under 50 ms.

    python benchmarks/bench_store.py            # default: 30 saves / 100 loads per case
    python benchmarks/bench_store.py --quick    # CI size

Prints a Markdown table and writes ``benchmarks/results/store.md`` and ``store.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

import streamnorm as sn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_cpu  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MS = 50.0


def cases() -> dict[str, sn.Stats]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 3, 32, 32), dtype=np.uint8)
    genes = rng.lognormal(size=(256, 20_000)).astype(np.float32)
    counts = rng.integers(0, 5000, size=(256, 20_000), dtype=np.uint16)
    return {
        "3 features, uint8 + histogram": sn.compute_stats([images], layout="NCHW",
                                                          histogram=True),
        "20,000 features, float32": sn.compute_stats([genes], layout="NF"),
        "20,000 features, uint16 (exact sums)": sn.compute_stats([counts], layout="NF"),
    }


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: imports, first-touch
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run(saves: int, loads: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"local": os.path.join(tmp, "store"),
                 "memory://": f"memory://bench-store/{uuid.uuid4().hex}"}
        for case, stats in cases().items():
            for backend, root in roots.items():
                store = sn.StatsStore(root)
                split = f"s{len(rows)}"
                store.save(stats, split)
                assert store.load(split).equals(stats)
                save_ms = timed(lambda st=store, s=stats, sp=split: st.save(s, sp, overwrite=True),
                                saves)
                load_ms = timed(lambda st=store, sp=split: st.load(sp), loads)
                size = store.fs.size(store._file(split))
                rows.append({"case": case, "backend": backend, "n_features": stats.n_features,
                             "file_bytes": int(size), "save_ms": round(save_ms, 2),
                             "load_ms": round(load_ms, 2)})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# StatsStore save / load",
        "",
        (f"Median of {meta['saves']} saves and {meta['loads']} loads per case "
         f"(`{meta['command']}`), {meta['machine']}; 1-minute load average "
         f"{meta['load_average'][0]:.2f} before and {meta['load_average'][1]:.2f} after "
         f"(other work on the machine slows every figure)."),
        "",
        "| case | backend | file size | save (ms) | load (ms) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['backend']} | {r['file_bytes'] / 1024:.1f} KiB "
                     f"| {r['save_ms']:.2f} | {r['load_ms']:.2f} |")
    worst = max(r["load_ms"] for r in rows if r["n_features"] == 20_000
                and r["backend"] == "local")
    verdict = "met" if worst < TARGET_MS else "NOT met"
    lines += ["", (f"Target: load 20,000 features locally in < {TARGET_MS:.0f} ms: {verdict} "
                   f"(slowest 20,000-feature local load {worst:.2f} ms).")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (CI)")
    args = parser.parse_args(argv)
    saves, loads = (5, 10) if args.quick else (30, 100)
    import pyarrow

    meta = {
        "saves": saves,
        "loads": loads,
        "command": "python benchmarks/bench_store.py" + (" --quick" if args.quick else ""),
        "machine": (f"{describe_cpu()}, Python "
                    f"{platform.python_version()}, pyarrow {pyarrow.__version__}, "
                    f"numpy {np.__version__}"),
        "streamnorm": sn.__version__,
    }
    before = os.getloadavg()[0]
    rows = run(saves, loads)
    meta["load_average"] = [round(before, 2), round(os.getloadavg()[0], 2)]
    text = markdown(rows, meta)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "store.md").write_text(text)
    (RESULTS / "store.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                    "target_load_ms": TARGET_MS}, indent=1)
                                        + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
