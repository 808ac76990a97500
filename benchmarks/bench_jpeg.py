"""JPEG decoders vs Pillow: speed and pixel identity on photos.

Photos (scikit-image's sample photos when scikit-image is installed, else
the two crops under ``tests/data/photos``) are encoded by Pillow in every
configuration: quality 75, 90 and 95; chroma subsampling 4:2:0, 4:2:2 and
4:4:4; baseline and progressive; plus gray JPEGs. Each decoder decodes every
file to 8-bit RGB (gray for gray files):

- Pillow: ``np.asarray(Image.open(...))`` (what streamnorm uses by default);
- simplejpeg (extra ``jpeg``): ``decode_jpeg(data, "RGB")``;
- OpenCV (``opencv-python-headless``): ``cv2.imdecode`` to RGB, EXIF
  orientation ignored as Pillow does;
- PyTurboJPEG: needs the system library libturbojpeg; reported as missing
  when it cannot be loaded;
- streamnorm's ``decode_image`` (simplejpeg where it is used, else Pillow,
  and the checks around them).

A decoder is pixel-identical in a configuration when every file of it decodes
to Pillow's array exactly. Speed is one thread, files in memory, median of
``--repeat`` interleaved runs, in CPU time (on a shared machine, wall time
also counts the time other processes hold the core), at 224x224 (photos resized first, as in
ImageNet-style datasets) and at the photos' own sizes.

Results go to ``benchmarks/results/jpeg.{md,json}``.

Usage: ``python benchmarks/bench_jpeg.py [--repeat 5]``
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_cpu  # noqa: E402
from _report import md_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "data" / "photos"
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
CONFIGS = [(q, s, p) for q in (75, 90, 95) for s in SUBSAMPLING for p in (False, True)]

Decoder = Callable[[bytes, bool], np.ndarray]


def photos() -> tuple[list[Image.Image], str]:
    """RGB photos and where they come from."""
    try:
        from skimage import data
    except ImportError:
        images = []
        for path in sorted(PHOTOS.glob("*.png")):
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        return images, "tests/data/photos (2 crops)"
    names = ("astronaut", "coffee", "chelsea", "rocket", "retina", "motorcycle_left", "immunohistochemistry")
    images = [Image.fromarray(getattr(data, n)()).convert("RGB") for n in names if hasattr(data, n)]
    return images, f"scikit-image {', '.join(n for n in names if hasattr(data, n))}"


def encode(image: Image.Image, quality: int, subsampling: int, progressive: bool) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, subsampling=subsampling, progressive=progressive)
    return buf.getvalue()


def pillow_decoder() -> tuple[str, Decoder]:
    import PIL
    from PIL import features

    def decode(data: bytes, gray: bool) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im)

    return f"{PIL.__version__} (libjpeg-turbo {features.version('libjpeg_turbo')})", decode


def simplejpeg_decoder() -> tuple[str, Decoder]:
    import simplejpeg

    def decode(data: bytes, gray: bool) -> np.ndarray:
        out = simplejpeg.decode_jpeg(data, colorspace="GRAY" if gray else "RGB")
        return out[:, :, 0] if gray else out

    return simplejpeg.__version__, decode


def opencv_decoder() -> tuple[str, Decoder]:
    import cv2

    cv2.setNumThreads(1)
    rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)

    def decode(data: bytes, gray: bool) -> np.ndarray:
        buf = np.frombuffer(data, np.uint8)
        if gray:
            return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
        if rgb is not None:
            return cv2.imdecode(buf, rgb | cv2.IMREAD_IGNORE_ORIENTATION)
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION),
                            cv2.COLOR_BGR2RGB)

    return cv2.__version__, decode


def turbojpeg_decoder() -> tuple[str, Decoder]:
    import turbojpeg

    jpeg = turbojpeg.TurboJPEG()  # raises when libturbojpeg cannot be found

    def decode(data: bytes, gray: bool) -> np.ndarray:
        if gray:
            return jpeg.decode(data, pixel_format=turbojpeg.TJPF_GRAY)[:, :, 0]
        return jpeg.decode(data, pixel_format=turbojpeg.TJPF_RGB)

    return str(getattr(turbojpeg, "__version__", "?")), decode


def streamnorm_decoder() -> tuple[str, Decoder]:
    from streamnorm.sources import decode_image
    from streamnorm.sources._jpeg import image_decoder

    def decode(data: bytes, gray: bool) -> np.ndarray:
        return decode_image(data, "L")[:, :, 0] if gray else decode_image(data, "RGB")

    return image_decoder(), decode


CANDIDATES = {"Pillow": pillow_decoder, "simplejpeg": simplejpeg_decoder,
              "OpenCV (opencv-python-headless)": opencv_decoder, "PyTurboJPEG": turbojpeg_decoder,
              "streamnorm decode_image": streamnorm_decoder}


def load_decoders() -> tuple[dict[str, tuple[str, Decoder]], dict[str, str]]:
    """The decoders that load here, and why the others do not."""
    ready, missing = {}, {}
    for name, make in CANDIDATES.items():
        try:
            ready[name] = make()
        except Exception as exc:  # ImportError, or PyTurboJPEG's RuntimeError without the library
            missing[name] = " ".join(f"{type(exc).__name__}: {exc}".split()).split(".")[0]
    return ready, missing


def rate(decode: Decoder, files: list[tuple[bytes, bool]], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        for data, gray in files:
            decode(data, gray)
        times.append(time.process_time() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    images, origin = photos()
    decoders, missing = load_decoders()
    labels = [f"q{q} {s}{' progressive' if p else ''}" for q, s, p in CONFIGS] + ["q90 gray"]
    full = [[(encode(im, q, SUBSAMPLING[s], p), False) for im in images] for q, s, p in CONFIGS]
    full.append([(encode(im.convert("L"), 90, 0, False), True) for im in images])

    _, pillow = decoders["Pillow"]
    identical: dict[str, dict[str, bool]] = {name: {} for name in decoders}
    for label, files in zip(labels, full):
        expected = [pillow(data, gray) for data, gray in files]
        for name, (_, decode) in decoders.items():
            identical[name][label] = all(np.array_equal(decode(d, g), e)
                                         for (d, g), e in zip(files, expected))

    small_images = [im.resize((224, 224), Image.Resampling.BICUBIC) for im in images]
    small = [(encode(im, q, SUBSAMPLING[s], p), False) for im in small_images for q, s, p in CONFIGS]
    every = [f for files in full for f in files]
    sets = {"224x224": small, "photo size": every}
    for name, (_, decode) in decoders.items():  # warm-up
        rate(decode, small[:20], 1)
    times: dict[str, dict[str, list[float]]] = {name: {s: [] for s in sets} for name in decoders}
    for _ in range(args.repeat):  # interleaved: load changes hit every decoder alike
        for name, (_, decode) in decoders.items():
            for label, files in sets.items():
                times[name][label] += rate(decode, files, 1)
    rows = []
    for name, (version, _) in decoders.items():
        row: dict = {"decoder": name, "version": version}
        for label, files in sets.items():
            per_s = len(files) / statistics.median(times[name][label])
            base = len(files) / statistics.median(times["Pillow"][label])
            row[f"{label} images/s"] = round(per_s)
            row[f"{label} x Pillow"] = round(per_s / base, 2)
        same = identical[name]
        row["pixel-identical"] = f"{sum(same.values())}/{len(same)} configurations"
        rows.append(row)
    rows += [{"decoder": name, "version": "not available", **{k: "-" for k in list(rows[0])[2:-1]},
              "pixel-identical": why} for name, why in missing.items()]
    config_rows = [{"configuration": label, **{name: "yes" if identical[name][label] else "NO"
                                               for name in decoders if name != "Pillow"}}
                   for label in labels]
    meta = {"machine": f"{describe_cpu()}, {platform.system()}", "python": platform.python_version(),
            "photos": origin, "n_photos": len(images), "repeat": args.repeat,
            "sizes": sorted({im.size for im in images}), "files_224": len(small),
            "files_photo_size": len(every)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "jpeg.json").write_text(json.dumps(
        {"meta": meta, "decoders": rows, "identical": identical, "missing": missing}, indent=2) + "\n")
    md = [
        "# JPEG decoders vs Pillow: speed and pixel identity",
        "",
        (f"{meta['machine']}, Python {meta['python']}; {len(images)} photos ({origin}) encoded by "
         f"Pillow in {len(labels)} configurations; one thread, files in memory, CPU time, "
         f"median of {args.repeat} interleaved runs. `python benchmarks/bench_jpeg.py`"),
        "",
        md_table(rows),
        "",
        "## Pixel identity with Pillow, per configuration (every photo decoded to the same array)",
        "",
        md_table(config_rows),
        "",
    ]
    (RESULTS / "jpeg.md").write_text("\n".join(md))
    print("\n".join(md))



if __name__ == "__main__":
    main()
