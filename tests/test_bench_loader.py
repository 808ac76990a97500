"""benchmarks/bench_loader.py: GPU timing on the target device, working sets above the L2
cache, every table naming its machine, the CPU mode's result files unchanged (issue 9)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from _fake_cuda import FakeCuda, FakePinning

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_loader.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_loader", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- timing events on the target device ---------------------------------------------------
@pytest.mark.parametrize("target", ["cuda:1", "cuda:0", "cuda:3"])
def test_cuda_time_records_its_events_on_the_target_device(bench, monkeypatch, target):
    # the process's current device stays cuda:0 (what --device cuda:1 leaves it at): events
    # recorded there would time nothing of the work queued on cuda:1
    fake = FakeCuda().install(monkeypatch)
    device = torch.device(target)

    def work():
        fake.log.append(("work", fake.current_stream().name))

    per_call = bench.cuda_time(work, device, reps=4)
    assert per_call == pytest.approx(1.0 / 1e3 / 4)
    log = fake.log
    records = [e for e in log if e[0] == "record"]
    assert len(records) == 2 and all(e[1].endswith(f"@default:{target}") for e in records)
    assert {e[1] for e in log if e[0] == "work"} == {f"default:{target}"}
    start, end = (log.index(e) for e in records)
    timed = [i for i, e in enumerate(log) if e[0] == "work"][1:]  # the first call warms up
    assert len(timed) == 4 and all(start < i < end for i in timed)
    assert log[-1] == ("synchronize", records[1][1])  # waits for the end event itself
    assert fake.current_device() == "cuda:0"  # the process's current device is restored


# -- working sets above the L2 cache -------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(sample_numel=st.integers(1, 50_000_000))
def test_gpu_buffers_are_at_least_256_mib_and_no_bigger_than_needed(bench, sample_numel):
    n = bench.gpu_buffer_samples(sample_numel)
    uint8_bytes, float32_bytes = n * sample_numel, 4 * n * sample_numel
    assert bench.MIN_GPU_BUFFER >= 256 * 2**20
    assert uint8_bytes >= bench.MIN_GPU_BUFFER and float32_bytes >= bench.MIN_GPU_BUFFER
    assert (n - 1) * sample_numel < bench.MIN_GPU_BUFFER or n == 1


def test_gpu_buffers_of_the_default_run_exceed_an_h200_l2(bench):
    n = bench.gpu_buffer_samples(3 * bench.SIDE * bench.SIDE)
    assert n * 3 * bench.SIDE * bench.SIDE > 5 * 50 * 10**6  # 5x the 50 MB L2 of an H100/H200


# -- every table names its machine ---------------------------------------------------------
CPUINFO = {
    "sapphire-rapids": ("model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
                        "flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl\n",
                        "x86_64", "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "AVX-512, AVX2"),
    "epyc-zen2": ("processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse avx avx2 fma\n"
                  "processor\t: 1\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse avx avx2 fma\n",
                  "x86_64", "AMD EPYC 7B12", "AVX2"),
    "old-x86": ("model name\t: Intel(R) Core(TM)2 Duo\nflags\t\t: fpu sse sse2 ssse3\n",
                "x86_64", "Intel(R) Core(TM)2 Duo", "SSE only"),
    "graviton3": ("processor\t: 0\nFeatures\t: fp asimd evtstrm sve sve2\nCPU part\t: 0xd40\n",
                  "aarch64", "0xd40", "SVE, NEON"),
}


@pytest.mark.parametrize("name", list(CPUINFO))
def test_cpu_model_and_vector_isa_from_cpuinfo(bench, name):
    text, arch, model, isa = CPUINFO[name]
    cpu = bench.cpu_from_cpuinfo(text, arch)
    assert (cpu["model"], cpu["isa"]) == (model, isa)


def fake_result(bench, device: str) -> dict:
    machine = {"cpu_model": "Intel(R) Xeon(R) Platinum 8481C", "cpu_isa": "AVX-512, AVX2",
               "cpu_cores": 16, "arch": "x86_64", "cpu_vector_flags": ["avx2", "avx512f"]}
    if device != "cpu":
        machine["gpu_name"] = "NVIDIA H200"
    path = {"samples_per_s": 1000.0, "bytes_per_sample": 150528.0, "seconds": 1.0,
            "cpu_us_per_sample": 10.0, "cpu_us_per_sample_reused_output": 9.0}
    r = {"date": "2026-12-01", "device": device, "machine": bench.describe_machine(machine),
         "python": "3.12", "torch": "2.13", "images": 8, "image": "224x224x3 uint8",
         "batch_size": 4, "workers": 0, "a_cpu_normalize": dict(path, bytes_per_sample=602112.0),
         "b_device_loader": dict(path), "bytes_ratio_a_over_b": 4.0,
         "throughput_ratio_b_over_a": 1.0, "cpu_cost_ratio_a_over_b": 1.0,
         "cpu_cost_ratio_a_over_b_reused": 1.0}
    if device != "cpu":
        r["b_device_loader"]["reserved_mib_after_each_epoch"] = [100.0, 120.0, 120.0]
        r["gpu"] = {"device_name": "NVIDIA H200", "h2d_ceiling_gb_s": 50.0,
                    "h2d_device_loader_gb_s": 47.0, "h2d_fraction_of_ceiling": 0.94,
                    "normalize_kernel_gb_s": 3000.0, "normalize_call_gb_s": 2900.0,
                    "d2d_copy_gb_s": 4000.0, "normalize_fraction_of_copy": 0.75,
                    "buffer_mib": {"normalize_in": 256.1, "normalize_out": 1024.5,
                                   "copy_src": 1024.5, "copy_dst": 1024.5}}
    return r


@pytest.mark.parametrize("device", ["cpu", "cuda:1"])
def test_every_table_names_cpu_model_isa_cores_and_gpu(bench, device):
    md = bench.to_markdown(fake_result(bench, device))
    sections = md.split("\n## ")
    tables = [s for s in sections if "|---" in s]
    assert len(tables) == (1 if device == "cpu" else 2)
    for section in tables:
        caption = section[: section.index("|---")]
        assert "Intel(R) Xeon(R) Platinum 8481C" in caption
        assert "AVX-512" in caption and "16 cores" in caption
        if device != "cpu":
            assert "NVIDIA H200" in caption
    if device != "cpu":
        assert "Timed on cuda:1" in md and "256 MiB or more" in md
        assert "100, 120, 120 MiB (flat after the warm-up epoch" in md


# -- the CPU mode: still runs, same result files --------------------------------------------
def json_keys(d: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in d.items():
        keys.add(prefix + k)
        if isinstance(v, dict):
            keys |= json_keys(v, f"{prefix}{k}.")
    return keys


def test_cpu_quick_run_keeps_the_result_format_and_names_the_machine(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--images", "8",
                    "--batch-size", "4", "--workers", "0", "--out", str(tmp_path)],
                   check=True, env=env, capture_output=True, timeout=600)
    committed = ROOT / "benchmarks" / "results"
    new = json.loads((tmp_path / "loader-cpu.json").read_text())
    old = json.loads((committed / "loader-cpu.json").read_text())
    assert json_keys(old) <= json_keys(new)  # nothing dropped or renamed
    assert {"cpu_model", "cpu_isa", "cpu_cores"} <= set(new)
    md = (tmp_path / "loader-cpu.md").read_text()
    old_md = (committed / "loader-cpu.md").read_text()
    header = [line for line in old_md.splitlines() if line.startswith("|")][:2]
    assert [line for line in md.splitlines() if line.startswith("|")][:2] == header
    caption = md[: md.index("|---")]
    assert new["cpu_model"] in caption and new["cpu_isa"] in caption
    assert f"{os.cpu_count()} cores" in caption


def test_gpu_section_runs_end_to_end_on_cpu_stand_ins(bench, monkeypatch):
    # no GPU here: run the GPU code path with CPU stand-ins (fake streams and pinning, small
    # buffers, a host clock) so that it is at least executed, and its table rendered
    FakeCuda().install(monkeypatch)
    FakePinning(monkeypatch)
    monkeypatch.setattr(bench, "MIN_GPU_BUFFER", 1 << 20)
    monkeypatch.setattr(bench, "sync", lambda device: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    timed = []

    def host_time(fn, device, reps):
        fn()
        timed.append(device)
        return 1e-3

    monkeypatch.setattr(bench, "cuda_time", host_time)
    images = torch.randint(0, 256, (4, bench.SIDE, bench.SIDE, 3), dtype=torch.uint8)
    norm = sn.Normalizer.from_mean_std(list(bench.MEAN), list(bench.STD), layout="NCHW")
    device = torch.device("cpu")
    g = bench.gpu_extras(images, 4, norm, device)
    assert timed == [device] * 3  # normalize kernel, normalize call, device copy
    assert g["device_name"] == "Fake GPU"
    assert min(g["buffer_mib"].values()) >= 1 and set(g["buffer_mib"]) == {
        "normalize_in", "normalize_out", "copy_src", "copy_dst"}
    assert g["normalize_fraction_of_copy"] == pytest.approx(
        g["normalize_kernel_gb_s"] / g["d2d_copy_gb_s"])
    r = fake_result(bench, "cuda:0")
    r["gpu"] = g
    assert "| normalize kernel uint8 -> float32 (read+write) |" in bench.to_markdown(r)
