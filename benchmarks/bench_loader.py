"""Loader throughput: normalize in the workers (float32 over PCIe) vs on the device (uint8).

The same synthetic 224x224 RGB uint8 images, held in memory, feed two
pipelines with the same batch size and workers, side by side in one run:

(a) the usual CPU path: each worker turns an HWC uint8 image into CHW float32
    and normalizes it (what ``ToTensor()`` + ``Normalize()`` do), the
    DataLoader collates float32 and the training loop copies it to the device
    (``pin_memory=True`` on CUDA);
(b) ``DeviceLoader``: workers only lay out CHW uint8, the uint8 batch crosses
    (pinned, ``non_blocking``, on a side stream) and is normalized on the
    device in one fused pass.

Reported per path: samples/s over one epoch (after a warm-up epoch, workers
persistent), bytes sent to the device per sample, and the CPU time the
normalization costs per sample (one thread, as in a worker; for (b) on a GPU
that is the host time to enqueue the kernel).

On a GPU it adds, measured in the same run and all on the target device
(``--device cuda:1`` times cuda:1: its events, its streams, its
synchronization): the pinned host-to-device copy ceiling for the uint8 batch
and the H2D GB/s that ``DeviceLoader`` achieves on in-memory pinned batches
(copies on its copy stream overlap the normalization on its compute stream);
the normalize kernel's GB/s (uint8 read + float32 written) vs a
device-to-device float32 copy, each on buffers of at least 256 MiB so that
neither fits the L2 cache (50 MB on an H100/H200); the device memory reserved
after each epoch (flat: nothing leaks per epoch); and the device name.

Every table names the machine: CPU model, vector ISA (AVX2 / AVX-512; NEON /
SVE on ARM), core count, and the GPU's name on CUDA.

Results: ``benchmarks/results/loader-<device>.{md,json}`` (``-quick`` with
``--quick``). Usage::

    python benchmarks/bench_loader.py [--quick] [--device cpu|cuda[:i]] [--images N]
        [--batch-size B] [--workers W]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

import streamnorm as sn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_from_cpuinfo, cpu_info, describe_cpu  # noqa: E402

__all__ = ["cpu_from_cpuinfo"]  # re-exported for the tests

RESULTS = Path(__file__).resolve().parent / "results"
MIN_GPU_BUFFER = 256 * 2**20  # bytes: far above the L2 cache of any GPU (50 MB on H100/H200)
SIDE = 224
MEAN = (123.675, 116.28, 103.53)  # the ImageNet constants, in uint8 units
STD = (58.395, 57.12, 57.375)


def machine_info(device: torch.device) -> dict:
    """The CPU (model, vector ISA, cores, architecture) and, on CUDA, the GPU's name."""
    info = cpu_info()
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
    return info


def describe_machine(m: dict) -> str:
    """One line naming the machine, as every table's caption."""
    return describe_cpu(m) + (f"; GPU {m['gpu_name']}" if m.get("gpu_name") else "")


def on_device(device: torch.device):
    """A context in which ``device`` is the current CUDA device (nothing off CUDA)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class InMemoryImages(Dataset):
    """Decoded HWC uint8 images in memory; ``transform`` runs in the worker."""

    def __init__(self, images: torch.Tensor, transform) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.images[i])


class ToTensorNormalize:
    """What torchvision's ``ToTensor()`` then ``Normalize(mean, std)`` compute."""

    def __init__(self) -> None:
        self.mean = torch.tensor(MEAN).div(255).view(3, 1, 1)
        self.std = torch.tensor(STD).div(255).view(3, 1, 1)

    def __call__(self, hwc: torch.Tensor) -> torch.Tensor:
        x = hwc.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        return x.sub_(self.mean).div_(self.std)


def to_chw_uint8(hwc: torch.Tensor) -> torch.Tensor:
    return hwc.permute(2, 0, 1).contiguous()


class CountBytes:
    """Pass batches through, counting the bytes that will cross to the device."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.pin_memory = getattr(loader, "pin_memory", False)
        self.nbytes = 0
        self.samples = 0

    def __iter__(self):
        for batch in self.loader:
            self.nbytes += batch.nbytes
            self.samples += len(batch)
            yield batch

    def __len__(self) -> int:
        return len(self.loader)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reserved_mib(device: torch.device) -> float:
    """Device memory held by torch's caching allocator (0 off CUDA)."""
    return torch.cuda.memory_reserved(device) / 2**20 if device.type == "cuda" else 0.0


def run_path(name: str, images, device, batch_size, workers, norm) -> dict:
    on_cuda = device.type == "cuda"
    transform = ToTensorNormalize() if name == "a" else to_chw_uint8
    loader = DataLoader(InMemoryImages(images, transform), batch_size=batch_size,
                        num_workers=workers, pin_memory=on_cuda,
                        persistent_workers=workers > 0)
    if name == "a":
        counted = CountBytes(loader)

        def epoch():
            out = None
            for batch in counted:
                out = batch.to(device, non_blocking=True)
            sync(device)
            return out
    else:
        counted = CountBytes(loader)
        dl = sn.DeviceLoader(counted, norm, device=device)

        def epoch():
            out = None
            for batch in dl:
                out = batch
            sync(device)
            return out

    reserved = []
    last = epoch()  # warm-up: worker start-up, pinned pools, kernels
    reserved.append(reserved_mib(device))
    counted.nbytes = counted.samples = 0
    t0 = time.perf_counter()
    last = epoch()
    seconds = time.perf_counter() - t0
    reserved.append(reserved_mib(device))
    assert last.dtype == torch.float32 and last.device.type == device.type
    result = {
        "samples_per_s": counted.samples / seconds,
        "bytes_per_sample": counted.nbytes / counted.samples,
        "seconds": seconds,
    }
    if on_cuda:
        epoch()  # a third epoch: the reserved memory must stay where the second left it
        reserved.append(reserved_mib(device))
        result["reserved_mib_after_each_epoch"] = reserved
    del loader
    return result


def cpu_cost_per_sample(images: torch.Tensor, batch_size: int, norm, device) -> dict:
    """CPU microseconds per sample of normalizing, on one thread (as a worker runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        transform = ToTensorNormalize()
        m = min(len(images), 128)
        transform(images[0])
        t0 = time.perf_counter()
        for i in range(m):
            transform(images[i])
        a = (time.perf_counter() - t0) / m
        batch = torch.stack([to_chw_uint8(images[i]) for i in range(min(batch_size, len(images)))])
        on = norm.to(device)
        xb = batch.to(device)
        buf = torch.empty(xb.shape, dtype=torch.float32, device=device)
        reps = 5

        def per_sample(fn) -> float:
            fn()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()  # on a GPU: host time to enqueue; the kernel runs asynchronously
            seconds = (time.perf_counter() - t0) / (reps * len(batch))
            sync(device)
            return seconds

        b = per_sample(lambda: on(xb))
        b_reused = per_sample(lambda: on(xb, out=buf))
    finally:
        torch.set_num_threads(threads)
    return {"a_us_per_sample": a * 1e6, "b_us_per_sample": b * 1e6,
            "b_reused_us_per_sample": b_reused * 1e6}


def gpu_buffer_samples(sample_numel: int, min_bytes: int | None = None) -> int:
    """Samples of ``sample_numel`` uint8 values whose smallest buffer (the uint8 input) holds
    at least ``min_bytes`` (default :data:`MIN_GPU_BUFFER`): the normalize and copy buffers
    then all do.

    >>> gpu_buffer_samples(3 * 224 * 224) * 3 * 224 * 224 >= 256 * 2**20
    True
    """
    return math.ceil((MIN_GPU_BUFFER if min_bytes is None else min_bytes) / sample_numel)


def cuda_time(fn, device: torch.device, reps: int) -> float:
    """Seconds per call of ``fn`` on ``device``, by CUDA events on its current stream.

    The events are created and recorded on ``device`` (not on the current
    device of the process, which ``--device cuda:1`` leaves at cuda:0).
    """
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device)
        fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        for _ in range(reps):
            fn()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / reps


def gpu_extras(images: torch.Tensor, batch_size: int, norm, device) -> dict:
    """Copy ceiling vs DeviceLoader H2D, normalize kernel vs D2D copy (CUDA only)."""
    n_batches = 16
    batch = torch.stack([to_chw_uint8(images[i % len(images)]) for i in range(batch_size)])
    pinned = [batch.clone().pin_memory() for _ in range(n_batches)]
    nbytes = sum(p.nbytes for p in pinned)

    def timed(fn, reps=3):
        fn()
        sync(device)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync(device)
            best = min(best, time.perf_counter() - t0)
        return best

    dest = torch.empty_like(batch, device=device)

    def plain_copy():
        for p in pinned:
            dest.copy_(p, non_blocking=True)

    dl = sn.DeviceLoader(pinned, norm, device=device, pin_memory=False)  # pinned already

    def device_loader():
        for _ in dl:
            pass

    ceiling = nbytes / timed(plain_copy) / 1e9
    achieved = nbytes / timed(device_loader) / 1e9

    on = norm.to(device)
    n = gpu_buffer_samples(batch[0].numel())
    # one uint8 batch stacked n/len times: big enough that no buffer fits the L2 cache
    x = batch.to(device).repeat(math.ceil(n / len(batch)), 1, 1, 1)[:n]
    out = torch.empty(x.shape, dtype=torch.float32, device=device)
    f32 = torch.empty(x.shape, dtype=torch.float32, device=device)
    f32_dst = torch.empty_like(f32)
    buffers = {"normalize_in": x, "normalize_out": out, "copy_src": f32, "copy_dst": f32_dst}
    assert all(b.nbytes >= MIN_GPU_BUFFER for b in buffers.values())
    reps = 20

    def t_norm_fn():
        torch.addcmul(on.shift.view(3, 1, 1), x, on.scale.view(3, 1, 1), out=out)

    t_norm = cuda_time(t_norm_fn, device, reps)
    t_api = cuda_time(lambda: on(x), device, reps)
    t_copy = cuda_time(lambda: f32_dst.copy_(f32), device, reps)
    norm_bytes = x.numel() * (1 + 4)
    copy_bytes = f32.numel() * 8
    return {
        "device_name": torch.cuda.get_device_name(device),
        "h2d_ceiling_gb_s": ceiling,
        "h2d_device_loader_gb_s": achieved,
        "h2d_fraction_of_ceiling": achieved / ceiling,
        "normalize_kernel_gb_s": norm_bytes / t_norm / 1e9,
        "normalize_call_gb_s": norm_bytes / t_api / 1e9,
        "d2d_copy_gb_s": copy_bytes / t_copy / 1e9,
        "normalize_fraction_of_copy": (norm_bytes / t_norm) / (copy_bytes / t_copy),
        "buffer_mib": {k: b.nbytes / 2**20 for k, b in buffers.items()},
    }


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, SIDE, SIDE, 3), dtype=torch.uint8, generator=gen)
    norm = sn.Normalizer.from_mean_std(list(MEAN), list(STD), layout="NCHW")

    with on_device(device):  # cuda:1 is timed on cuda:1, not on the process's cuda:0
        a = run_path("a", images, device, args.batch_size, args.workers, norm)
        b = run_path("b", images, device, args.batch_size, args.workers, norm)
        cost = cpu_cost_per_sample(images, args.batch_size, norm, device)
        gpu = gpu_extras(images, args.batch_size, norm, device) if device.type == "cuda" else None
    machine = machine_info(device)
    result = {
        "benchmark": "loader",
        "date": time.strftime("%Y-%m-%d"),
        "device": str(device),
        "machine": describe_machine(machine),
        **{k: machine[k] for k in ("cpu_model", "cpu_isa", "cpu_cores", "cpu_vector_flags")},
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "streamnorm": sn.__version__,
        "images": args.images,
        "image": f"{SIDE}x{SIDE}x3 uint8",
        "batch_size": args.batch_size,
        "workers": args.workers,
        "a_cpu_normalize": {**a, "cpu_us_per_sample": cost["a_us_per_sample"]},
        "b_device_loader": {**b, "cpu_us_per_sample": cost["b_us_per_sample"],
                            "cpu_us_per_sample_reused_output": cost["b_reused_us_per_sample"]},
        "bytes_ratio_a_over_b": a["bytes_per_sample"] / b["bytes_per_sample"],
        "throughput_ratio_b_over_a": b["samples_per_s"] / a["samples_per_s"],
        "cpu_cost_ratio_a_over_b": cost["a_us_per_sample"] / cost["b_us_per_sample"],
        "cpu_cost_ratio_a_over_b_reused": cost["a_us_per_sample"] / cost["b_reused_us_per_sample"],
    }
    if gpu is not None:
        result["gpu"] = gpu
    return result


def to_markdown(r: dict) -> str:
    a, b = r["a_cpu_normalize"], r["b_device_loader"]
    where = "device" if r["device"] != "cpu" else "device (cpu here: no PCIe)"
    lines = [
        f"# Loader throughput on {r.get('gpu', {}).get('device_name', r['device'])}",
        "",
        (f"{r['date']}; {r['machine']}; Python {r['python']}, torch {r['torch']}; "
        f"{r['images']} images of {r['image']}, batch {r['batch_size']}, "
        f"{r['workers']} workers; one run, one timed epoch after a warm-up epoch."),
        "",
        (f"| path | samples/s | bytes to {where} per sample | CPU normalize us/sample "
         "| same, into a reused buffer |"),
        "|---|---|---|---|---|",
        (f"| (a) ToTensor+Normalize in workers, float32 to device | {a['samples_per_s']:.0f} "
         f"| {a['bytes_per_sample']:.0f} | {a['cpu_us_per_sample']:.0f} | |"),
        (f"| (b) DeviceLoader: uint8 to device, normalized there | {b['samples_per_s']:.0f} "
         f"| {b['bytes_per_sample']:.0f} | {b['cpu_us_per_sample']:.0f} "
         f"| {b['cpu_us_per_sample_reused_output']:.0f} |"),
        "",
        f"- bytes per sample (a)/(b): **{r['bytes_ratio_a_over_b']:.2f}x** (target: 4)",
        f"- throughput (b)/(a): **{r['throughput_ratio_b_over_a']:.2f}x**",
        (f"- CPU normalization cost per sample (a)/(b): **{r['cpu_cost_ratio_a_over_b']:.1f}x** "
         f"(fresh output), **{r['cpu_cost_ratio_a_over_b_reused']:.1f}x** (reused output)"),
    ]
    if r["device"] == "cpu":
        lines += [
            "",
            ("On the CPU, (b) normalizes in the main process while (a) spreads the work over "
             "the workers, and a fresh float32 batch larger than glibc's mmap threshold (at "
             "most 32 MB) is page-faulted in on every call; the reused-buffer column shows the "
             "arithmetic alone. DeviceLoader's gains are for accelerators: 4x fewer bytes over "
             "PCIe and no arithmetic in the workers."),
        ]
    if "gpu" in r:
        g = r["gpu"]
        lines += [
            "",
            f"## {g['device_name']}",
            "",
            (f"Machine: {r['machine']}. Timed on {r['device']} (its events and streams); the "
             f"normalize and copy buffers are {min(g['buffer_mib'].values()):.0f} MiB or more "
             "each, far above the L2 cache."),
            "",
            "| measure | GB/s | fraction | target |",
            "|---|---|---|---|",
            f"| pinned H2D copy ceiling (uint8 batch) | {g['h2d_ceiling_gb_s']:.1f} | 1 | |",
            (f"| DeviceLoader H2D (pinned in-memory batches) | {g['h2d_device_loader_gb_s']:.1f} "
            f"| {g['h2d_fraction_of_ceiling']:.2f} | >= 0.9 |"),
            f"| device-to-device float32 copy (read+write) | {g['d2d_copy_gb_s']:.0f} | 1 | |",
            (f"| normalize kernel uint8 -> float32 (read+write) | {g['normalize_kernel_gb_s']:.0f} "
            f"| {g['normalize_fraction_of_copy']:.2f} | >= 0.6 |"),
            f"| Normalizer call (same, via the API) | {g['normalize_call_gb_s']:.0f} | | |",
        ]
        reserved = r["b_device_loader"].get("reserved_mib_after_each_epoch")
        if reserved:
            flat = "flat" if len(set(reserved[1:])) == 1 else "NOT flat"
            lines += ["", (f"- DeviceLoader reserved device memory after epochs 1, 2, 3: "
                           f"{', '.join(f'{v:.0f}' for v in reserved)} MiB ({flat} after the "
                           "warm-up epoch; target: flat)")]
    else:
        lines += [
            "",
            ("No GPU in this run: PCIe figures (H2D GB/s vs the pinned-copy ceiling, normalize "
            "kernel GB/s vs a device copy) are measured only with `--device cuda`."),
        ]
    return "\n".join(lines) + "\n"


def slug(result: dict) -> str:
    name = result.get("gpu", {}).get("device_name", result["device"])
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="192 images, batch 32")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.images, args.batch_size = 192, 32
    result = run(args)
    md = to_markdown(result)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"loader-{slug(result)}" + ("-quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(md)
    print(f"written: {args.out / (stem + '.md')}")


if __name__ == "__main__":
    main()
