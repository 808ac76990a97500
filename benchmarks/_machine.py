"""The machine a benchmark ran on, named in every table: CPU model, vector ISA, cores.

numba's code differs with the CPU (AVX2 vs AVX-512 ...), so a figure without
its CPU says little. Shared by every script under ``benchmarks/``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_from_cpuinfo(text: str, arch: str) -> dict:
    """CPU model, widest vector ISAs and their flags, from the text of ``/proc/cpuinfo``.

    >>> cpu_from_cpuinfo("model name : Xeon\\nflags : sse avx2 avx512f avx512bw\\n", "x86_64")
    {'model': 'Xeon', 'isa': 'AVX-512, AVX2', 'vector_flags': ['avx2', 'avx512bw', 'avx512f']}
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() not in fields:
            fields[name.strip()] = value.strip()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    model = fields.get("model name") or fields.get("Model") or fields.get("CPU part") or "unknown CPU"
    if arch in ("x86_64", "AMD64", "i686", "i386"):
        names = (("avx512f", "AVX-512"), ("avx2", "AVX2"))
        vector = sorted(f for f in flags if f.startswith(("avx512", "avx2")))
        fallback = "AVX" if "avx" in flags else "SSE only"
    else:
        names = (("sve", "SVE"), ("asimd", "NEON"))
        vector = sorted(f for f in flags if f.startswith(("sve", "asimd")))
        fallback = "no vector flags listed"
    isa = ", ".join(name for flag, name in names if flag in flags) or fallback
    return {"model": model, "isa": isa, "vector_flags": vector}


def cpu_info() -> dict:
    """This machine's CPU: model, vector ISA and flags, core count, architecture."""
    arch = platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    cpu = cpu_from_cpuinfo(text, arch)
    if cpu["model"] == "unknown CPU" and platform.processor():
        cpu["model"] = platform.processor()
    return {"cpu_model": cpu["model"], "cpu_isa": cpu["isa"], "cpu_cores": os.cpu_count(),
            "cpu_vector_flags": cpu["vector_flags"], "arch": arch}


def describe_cpu(info: dict | None = None) -> str:
    """One line naming the CPU, as a table caption: ``"AMD EPYC (AVX2), 2 cores, x86_64"``."""
    m = cpu_info() if info is None else info
    return f"{m['cpu_model']} ({m['cpu_isa']}), {m['cpu_cores']} cores, {m['arch']}"
