"""``streamnorm demo``: the whole workflow on a small generated dataset.

1. writes synthetic images (ImageFolder layout, train/val/test, with a
   grayscale PNG, an RGBA PNG and a JPEG among them) and a tabular Parquet
   file per split (integer, float and nullable columns);
2. computes each split's statistics and saves them in two stores;
3. prints ``show`` and ``diff`` (the test split is drifted on purpose);
4. runs one :class:`~streamnorm.DeviceLoader` epoch over the training images,
   normalized on the device (the GPU when there is one), and checks that the
   normalized data has mean 0 and std 1 per channel.

Takes a few seconds; everything lands under one folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["make_demo_data", "run_demo"]

SPLITS = ("train", "val", "test")
CLASSES = ("circles", "squares")
IMAGE_SIZE = 32
IMAGES_PER_CLASS = 24
TABLE_ROWS = 4000
# How far each split's images are brightened and its incomes scaled: val
# stays close to train, test drifts (so `diff` has something to flag).
BRIGHTNESS = {"train": 0, "val": 2, "test": 30}
INCOME_SCALE = {"train": 1.0, "val": 1.01, "test": 1.4}


def _image(rng: np.random.Generator, label: int, brightness: int) -> np.ndarray:
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    c = IMAGE_SIZE / 2 + rng.normal(0, 3, 2)
    if label == 0:
        mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < rng.uniform(40, 120)
    else:
        half = rng.uniform(5, 10)
        mask = (np.abs(yy - c[0]) < half) & (np.abs(xx - c[1]) < half)
    base = np.array([60, 90, 140]) + rng.normal(0, 10, 3)
    fg = np.array([220, 170, 60]) if label == 0 else np.array([70, 200, 120])
    img = np.where(mask[..., None], fg, base) + rng.normal(0, 12, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(img + brightness, 0, 255).astype(np.uint8)


def make_demo_data(workdir: str, seed: int = 0) -> dict[str, str]:
    """Write the demo images and tables under ``workdir``; return their folders."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = os.path.join(workdir, "images")
    tables = os.path.join(workdir, "tabular")
    for split in SPLITS:
        for label, cls in enumerate(CLASSES):
            folder = os.path.join(images, split, cls)
            os.makedirs(folder, exist_ok=True)
            for i in range(IMAGES_PER_CLASS):
                img = Image.fromarray(_image(rng, label, BRIGHTNESS[split]))
                name = os.path.join(folder, f"{i:03d}")
                if split == "train" and cls == CLASSES[0] and i == 0:
                    img.convert("L").save(name + ".png")       # grayscale: read as RGB
                elif split == "train" and cls == CLASSES[0] and i == 1:
                    rgba = img.convert("RGBA")
                    rgba.putalpha(128)
                    rgba.save(name + ".png")                   # RGBA: alpha dropped
                elif i == 2:
                    img.save(name + ".jpg", quality=90)        # JPEG
                else:
                    img.save(name + ".png")
        os.makedirs(tables, exist_ok=True)
        n = TABLE_ROWS
        score = rng.normal(0.5, 0.2, n).astype(np.float32)
        nulls = rng.random(n) < 0.01
        table = pa.table({
            "age": pa.array(rng.integers(18, 90, n).astype(np.int16)),
            "income": pa.array(rng.lognormal(10.5, 0.5, n) * INCOME_SCALE[split]),
            "clicks": pa.array(rng.poisson(3, n).astype(np.uint8)),
            "score": pa.array(score, mask=nulls),
            "city": pa.array(rng.choice(["Lyon", "Oslo", "Pune"], n)),  # not numeric: ignored
        })
        pq.write_table(table, os.path.join(tables, f"{split}.parquet"), row_group_size=1000)
    return {"images": images, "tabular": tables}


def _device_epoch(stats: Any, image_root: str) -> tuple[str, np.ndarray, np.ndarray, int]:
    """One DeviceLoader epoch over the training images; per-channel mean/std after it."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from . import DeviceLoader, Normalizer
    from .sources import decode_image, resolve_files

    files = [info for _, info in resolve_files([image_root])]
    arrays = [decode_image(Path(info.url.removeprefix("file://")).read_bytes()) for info in files]
    labels = [CLASSES.index(info.url.rsplit("/", 2)[-2]) for info in files]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # NCHW uint8
    loader = DataLoader(TensorDataset(x, torch.tensor(labels)), batch_size=16, shuffle=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    norm = Normalizer.from_stats(stats, mode="zscore", layout="NCHW")
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for images, _labels in DeviceLoader(loader, norm, device=device, key=0):
        flat = images.double().transpose(0, 1).reshape(3, -1)
        total += flat.sum(dim=1).cpu()
        total_sq += (flat * flat).sum(dim=1).cpu()
        count += flat.shape[1]
    mean = (total / count).numpy()
    std = np.sqrt(np.maximum((total_sq / count).numpy() - mean**2, 0.0))
    return device, mean, std, len(arrays)


def run_demo(
    workdir: str,
    progress: bool | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo under ``workdir``; returns the stores and the epoch's check values."""
    from . import engine, report
    from .store import StatsStore

    os.makedirs(workdir, exist_ok=True)
    echo(f"streamnorm demo in {workdir}")
    data = make_demo_data(workdir)
    stores = {
        "images": StatsStore(os.path.join(workdir, "stats", "images")),
        "tabular": StatsStore(os.path.join(workdir, "stats", "tabular")),
    }
    echo("")
    echo("1. compute: one pass per split, saved as <store>/split=<name>/stats.parquet")
    for split in SPLITS:
        runs = {
            "images": engine.compute([os.path.join(data["images"], split)], histogram=True,
                                     workers=1, progress=progress),
            "tabular": engine.compute([os.path.join(data["tabular"], f"{split}.parquet")],
                                      nan_policy="omit", workers=1, progress=progress),
        }
        for kind, run in runs.items():
            path = stores[kind].save(run.stats, split, overwrite=True, source=run.summary())
            echo(f"   {kind:8s} {split:5s}: {run.rows:>5,} {run.source.unit:6s} -> {path}")
    train = stores["images"].load("train")
    echo("")
    echo("2. show: the training images (NHWC uint8, exact histograms -> quantiles)")
    echo(report.format_table(report.summary_rows(train)))
    echo("")
    echo("   the training table (numeric columns only; 'score' has nulls, omitted and counted)")
    echo(report.format_table(report.summary_rows(stores["tabular"].load("train"))))
    diffs = {}
    for kind, store in stores.items():
        for other in ("val", "test"):
            d = report.diff(store.load("train"), store.load(other), names=("train", other))
            diffs[(kind, other)] = d
    echo("")
    echo("3. diff: did val/test drift from train? (flagged: |SMD| > 0.1, std ratio off by "
         ">10%, KS > 0.1)")
    for (kind, other), d in diffs.items():
        flagged = ", ".join(d.flagged) or "nothing"
        echo(f"   {kind:8s} {other:5s} vs train: flagged {flagged}")
    echo("")
    echo("   images, test vs train:")
    cols = ["feature", "smd", "std_ratio", "ks", "flagged"]
    echo(report.format_table([{c: r[c] for c in cols} for r in diffs[("images", "test")].rows]))
    device, mean, std, n = _device_epoch(train, os.path.join(data["images"], "train"))
    echo("")
    echo(f"4. one DeviceLoader epoch on {device}: {n} training images, uint8 to the device, "
         f"z-scored there")
    echo(f"   normalized per-channel mean {np.round(mean, 4).tolist()}, "
         f"std {np.round(std, 4).tolist()} (expect 0 and 1)")
    root = os.path.join(workdir, "stats")
    echo("")
    echo("next: streamnorm show " + os.path.join(root, "images"))
    echo("      streamnorm diff " + os.path.join(root, "tabular") + " train test")
    echo("      streamnorm plot " + os.path.join(root, "images") + " --out "
         + os.path.join(workdir, "images.png"))
    return {"stores": stores, "diffs": diffs, "device": device, "mean": mean, "std": std}
