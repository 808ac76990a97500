"""The kernels run as plain Python too, and survive an unwritable JIT cache."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

import streamnorm as sn
from streamnorm import _kernels

SCRIPT = textwrap.dedent("""
    import json, numpy as np, streamnorm as sn
    from streamnorm import _kernels
    rng = np.random.default_rng(3)
    out = {"jit": _kernels.JIT_ENABLED}
    cases = {
        "u8_nchw": (rng.integers(0, 256, (3, 3, 9, 9), dtype=np.uint8), "NCHW", {}),
        "u8_hist": (rng.integers(0, 256, (300, 2), dtype=np.uint8), "NF", {"histogram": True}),
        "i8_nhwc": (rng.integers(-128, 128, (2, 5, 5, 3)).astype(np.int8), "NHWC", {}),
        "u8_nhwc4": (rng.integers(0, 256, (2, 5, 5, 4), dtype=np.uint8), "NHWC", {}),
        "i8_nhwc2": (rng.integers(-128, 128, (2, 5, 5, 2)).astype(np.int8), "NHWC", {}),
        "i16_nf": (rng.integers(-2**15, 2**15, (600, 3)).astype(np.int16), "NF", {}),
        "u32_ncl": (rng.integers(0, 2**32, (2, 2, 70), dtype=np.uint32), "NCL", {}),
        "i32_nf": (rng.integers(-2**31, 2**31, (500, 2)).astype(np.int32), "NF", {}),
        "f32_ncl": (rng.standard_normal((2, 2, 150)).astype(np.float32), "NCL", {}),
        "f64_nf_nan": (np.where(rng.random((400, 3)) < 0.05, np.nan, rng.standard_normal((400, 3))),
                       "NF", {"nan_policy": "omit"}),
    }
    for name, (x, layout, kw) in cases.items():
        s = sn.compute_stats([x[:1], x[1:]], layout=layout, **kw)
        out[name] = [s.count.tolist(), s.nan_count.tolist(), s.mean.tolist(), s.m2.tolist(),
                     s.min.tolist(), s.max.tolist(),
                     None if s.histogram is None else s.histogram.tolist()]
    print(json.dumps(out))
""")


def _run(env_extra: dict) -> dict:
    env = {**os.environ, **env_extra}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_plain_python_kernels_agree_with_numba():
    jit = _run({"STREAMNORM_DISABLE_JIT": "0"})
    plain = _run({"STREAMNORM_DISABLE_JIT": "1"})
    assert jit.pop("jit") is True and plain.pop("jit") is False
    for name in jit:
        a, b = jit[name], plain[name]
        assert a[0] == b[0] and a[1] == b[1] and a[4:] == b[4:], name
        np.testing.assert_allclose(a[2], b[2], rtol=1e-14, err_msg=name)
        np.testing.assert_allclose(a[3], b[3], rtol=1e-12, err_msg=name)


def test_unwritable_cache_falls_back_to_uncached_jit(monkeypatch):
    import numba

    calls = []
    real = numba.njit

    def refusing_njit(*args, **kwargs):
        calls.append(kwargs.get("cache"))
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function 'k': no locator available for file")
        return real(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", refusing_njit)
    monkeypatch.setattr(_kernels, "CACHE_ENABLED", True)

    def twice(x):
        return x * 2

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn = _kernels._jit(twice)
    assert calls == [True, False]
    assert fn(np.int64(21)) == 42 and hasattr(fn, "py_func")
    assert any("NUMBA_CACHE_DIR" in str(w.message) for w in caught)
    assert _kernels.CACHE_ENABLED is False


def test_read_only_cache_dir_in_a_fresh_process(tmp_path):
    # A package directory and NUMBA_CACHE_DIR that cannot hold a cache must
    # not break import or results.
    bad_dir = tmp_path / "not-a-dir"
    bad_dir.write_text("a file where the cache folder should be")
    out = _run({"NUMBA_CACHE_DIR": str(bad_dir / "cache")})
    ref = _run({})
    assert out == ref


def test_kernels_release_the_gil_and_module_has_no_heavy_imports():
    assert sn.StatsAccumulator  # core imported
    code = ("import sys, streamnorm; bad = [m for m in ('torch.cuda', 'torchdata', 'fsspec', 'dask',"
            " 'pyarrow') if m in sys.modules]; print(bad)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
