"""Item 6: the normalizer's evaluation keeps the precision and the ranges it documents.

``x * scale + shift`` cancels on data far from zero (``|mean| / std`` = 1e8
leaves eight float64 digits) and, with ``scale`` and ``shift`` rounded apart,
put the min-max minimum at -3e-8 instead of 0. The map is now evaluated as
``(x - center) * scale + offset``. Held here against exact rational oracles
built from the statistics' own values (so only the evaluation is measured),
against scikit-learn's scalers where their float64 arithmetic is exact, and on
the accelerator path's arithmetic (run on the CPU when no GPU is present).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

import streamnorm as sn
from streamnorm import _affine

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
EPS64 = np.finfo(np.float64).eps
RANGES = {"minmax": (0.0, 1.0), "symmetric": (-1.0, 1.0)}
OUT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def split(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Rows of ``x`` cut into batches of the given sizes (cycled)."""
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        out.append(x[i : i + n])
        i, k = i + n, k + 1
    return out


def fused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluate as on an accelerator (sub, then addcmul) while on the CPU."""
    monkeypatch.setattr(_affine, "_fuses", lambda device: True)


# -- ranges: inside [low, high], minimum exactly at low, every dtype ----------------------
@st.composite
def range_data(draw):
    dtype = draw(st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16,
                                  np.float32, np.float64]))
    rows, nf = draw(st.integers(1, 30)), draw(st.integers(1, 3))
    if np.dtype(dtype).kind == "f":
        big = {np.float16: 1e3, np.float32: 1e7, np.float64: 1e12}[dtype]
        offset = draw(st.floats(-big, big))
        spread = draw(st.floats(1e-3, big)) if dtype != np.float16 else draw(st.floats(1e-1, 1e3))
        unit = st.floats(0, 1)
        cols = [[offset + spread * draw(unit) for _ in range(rows)] for _ in range(nf)]
    else:
        info = np.iinfo(dtype)
        lo, hi = max(int(info.min), -(2**53)), min(int(info.max), 2**53)
        start = draw(st.integers(lo, hi))
        span = draw(st.integers(0, hi - start))
        cols = [[start + draw(st.integers(0, span)) for _ in range(rows)] for _ in range(nf)]
    x = np.array(cols, dtype=np.float64).T.astype(dtype)
    return x


@settings(max_examples=200, deadline=None)
@given(range_data(), st.sampled_from(sorted(RANGES)), st.sampled_from(OUT_DTYPES),
       st.booleans(), st.booleans())
def test_range_modes_stay_in_range_and_min_is_exact(x, mode, out_dtype, accelerator, nchw):
    low, high = RANGES[mode]
    norm = sn.Normalizer.from_stats(sn.compute_stats([x], layout="NF"), mode)
    t = torch.from_numpy(x)
    if nchw:  # the same data as an image batch: features on axis 1, any memory format
        t = t.T.reshape(1, x.shape[1], x.shape[0], 1).contiguous(
            memory_format=torch.channels_last)
        norm = norm.with_layout("NCHW")
    with pytest.MonkeyPatch.context() as mp:
        if accelerator:
            fused(mp)
        y = norm(t, dtype=out_dtype).double()
    at_min = t == t.amin(dim=(0, 2, 3) if nchw else 0, keepdim=True)
    assert torch.all(y[at_min] == low), "the minimum must map exactly to the low end"
    assert torch.all((y >= low) & (y <= high)), (float(y.min()), float(y.max()))


@settings(max_examples=100, deadline=None)
@given(range_data(), st.sampled_from(sorted(RANGES)), st.sampled_from(OUT_DTYPES),
       st.booleans())
def test_known_range_stays_in_range(x, mode, out_dtype, accelerator):
    low, high = RANGES[mode]
    xf = x.astype(np.float64)
    lo, hi = xf.min(), xf.max()
    if not hi > lo:
        return  # from_range needs low < high: a documented error, tested elsewhere
    norm = sn.Normalizer.from_range(float(lo), float(hi), mode)  # one scalar map, layout N
    with pytest.MonkeyPatch.context() as mp:
        if accelerator:
            fused(mp)
        y = norm(torch.from_numpy(x), dtype=out_dtype).double()
    assert torch.all(y[torch.from_numpy(xf == lo)] == low)
    assert torch.all((y >= low) & (y <= high))


def test_float32_minmax_minimum_is_zero_like_sklearn():
    """The issue's measurement: -3e-8 at the minimum, where scikit-learn's float32 scaler gives 0."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 4)) * [1, 10, 1e3, 1e-2] + [0.3, -7, 1e5, 2]).astype(np.float32)
    stats = sn.compute_stats(split(x, [7, 64]), layout="NF")
    for mode, rng_ in RANGES.items():
        sk = MinMaxScaler(feature_range=rng_).fit(x)
        expected = sk.transform(x)
        assert np.all(expected[x == x.min(0)] == rng_[0])
        y = sn.Normalizer.from_stats(stats, mode)(x)
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y[x == x.min(0)], rng_[0])
        assert np.all((y >= rng_[0]) & (y <= rng_[1]))
        # as accurate as float32 holds: scikit-learn's float32 x * scale_ + min_ cancels more
        x64 = x.astype(np.float64)
        exact = MinMaxScaler(feature_range=rng_).fit(x64).transform(x64)
        np.testing.assert_allclose(y, exact, rtol=0, atol=4 * np.finfo(np.float32).eps)


# -- float64 against exact oracles and scikit-learn, on offset data -------------------------
def exact_zscore(x: np.ndarray, mean, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` in rational arithmetic from the given values, rounded once."""
    out = np.empty(x.shape)
    for j in range(x.shape[1]):
        m = mean[j] if isinstance(mean[j], Fraction) else Fraction(float(mean[j]))
        s = Fraction(float(std[j]))
        out[:, j] = [float((Fraction(float(v)) - m) / s) for v in x[:, j]]
    return out


def exact_range(x: np.ndarray, mode: str) -> np.ndarray:
    low, high = RANGES[mode]
    out = np.empty(x.shape)
    for j in range(x.shape[1]):
        lo, hi = Fraction(float(x[:, j].min())), Fraction(float(x[:, j].max()))
        width = hi - lo if hi - lo >= 10 * EPS64 else Fraction(1)  # scikit-learn's constant rule
        out[:, j] = [float(low + (Fraction(float(v)) - lo) * Fraction(high - low) / width)
                     for v in x[:, j]]
    return out


def assert_close_to_scale(y: np.ndarray, expected: np.ndarray, ulps: float) -> None:
    """Per feature, within ``ulps`` float64 ulps of the output's scale (its largest |value|)."""
    scale = np.maximum(np.abs(expected).max(axis=0), 1.0)
    err = np.abs(y - expected) / scale
    assert err.max() <= ulps * EPS64, f"{err.max() / EPS64:.1f} ulps of the output scale"


@st.composite
def offset_floats(draw):
    """float64 data whose |mean| / std reaches 1e12, in batches of a few rows."""
    rows, nf = draw(st.integers(2, 40)), draw(st.integers(1, 3))
    cols = []
    for _ in range(nf):
        offset = draw(st.floats(-1e14, 1e14))
        std = draw(st.floats(1e-3, 1e3))
        cols.append([offset + std * draw(st.floats(-3, 3)) for _ in range(rows)])
    x = np.array(cols).T
    return x, draw(st.lists(st.integers(1, 9), min_size=1, max_size=4))


@settings(max_examples=80, deadline=None)
@given(offset_floats())
def test_float64_zscore_exact_for_the_statistics_on_offset_data(case):
    x, sizes = case
    stats = sn.compute_stats(split(x, sizes), layout="NF")
    norm = sn.Normalizer.from_stats(stats)
    # the statistics' mean is shift + shifted_mean, exactly (stats.mean is its rounding)
    center = [Fraction(float(a)) + Fraction(float(b)) for a, b in zip(stats.shift, stats.shifted_mean)]
    expected = exact_zscore(x, center, np.where(stats.std > 0, stats.std, 1.0))
    if not np.all(stats.std > 0) or np.any(norm.scale64.numpy() == 1.0):
        return  # constant (by scikit-learn's rule): covered by the constant-feature tests
    assert_close_to_scale(norm(x, dtype=np.float64), expected, 4)
    back = norm.inverse(norm(x, dtype=np.float64))
    assert np.all(np.abs(back - x) <= 8 * EPS64 * (np.abs(x) + stats.std * np.abs(expected)))


@settings(max_examples=80, deadline=None)
@given(offset_floats(), st.sampled_from(sorted(RANGES)))
def test_float64_range_modes_exact_on_offset_data(case, mode):
    x, sizes = case
    norm = sn.Normalizer.from_stats(sn.compute_stats(split(x, sizes), layout="NF"), mode)
    expected = exact_range(x, mode)
    assert_close_to_scale(norm(x, dtype=np.float64), expected, 4)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3).flatmap(lambda nf: st.tuples(
    st.lists(st.integers(-(2**40), 2**40), min_size=nf, max_size=nf),
    st.lists(st.lists(st.integers(-1000, 1000), min_size=nf, max_size=nf), min_size=1,
             max_size=25),
    st.integers(-30, 30))))
def test_float64_zscore_matches_standard_scaler_on_offset_data(case):
    """Symmetric data around an offset: every mean is exact, so scikit-learn's is too."""
    offsets, devs, exponent = case
    d = np.array(devs, dtype=np.float64)
    x = np.ldexp(np.vstack([np.array(offsets) + d, np.array(offsets) - d]), exponent)
    stats = sn.compute_stats([x], layout="NF")
    sk = StandardScaler().fit(x)
    np.testing.assert_array_equal(stats.mean, sk.mean_)  # both exact: the test's premise
    assert_close_to_scale(sn.Normalizer.from_stats(stats)(x, dtype=np.float64),
                          sk.transform(x), 4)


@settings(max_examples=60, deadline=None)
@given(st.integers(-(2**31) + 20_000, 2**31 - 20_000), st.integers(1, 9_999),
       st.lists(st.integers(0, 1), min_size=2, max_size=40),
       st.sampled_from(["zscore", "minmax", "symmetric"]))
def test_float64_exact_on_offset_integer_data(offset, spread, picks, mode):
    """int32 data at |mean| / std up to 1e9: the exact mean of the exact sums is the center."""
    rng = np.random.default_rng(len(picks) * spread)
    x = (offset + rng.integers(-spread, spread + 1, size=(len(picks), 2))).astype(np.int32)
    stats = sn.compute_stats([x[:1], x[1:]], layout="NF")
    assert stats.is_exact
    norm = sn.Normalizer.from_stats(stats, mode)
    if mode == "zscore":
        if np.any(norm.scale64.numpy() == 1.0):
            return
        exact = []
        for j in range(2):
            col = [int(v) for v in x[:, j]]
            mean = Fraction(sum(col), len(col))
            std = Fraction(float(stats.std[j]))
            exact.append([float((v - mean) / std) for v in col])
        expected = np.array(exact).T
    else:
        expected = exact_range(x.astype(np.float64), mode)
    assert_close_to_scale(norm(x, dtype=np.float64), expected, 4)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([np.uint8, np.int8]), st.integers(2, 60), st.integers(1, 3), st.data())
def test_float64_robust_matches_robust_scaler(dtype, rows, nf, data):
    info = np.iinfo(dtype)
    x = np.array(data.draw(st.lists(st.lists(st.integers(int(info.min), int(info.max)),
                                             min_size=nf, max_size=nf),
                                    min_size=rows, max_size=rows)), dtype=dtype)
    stats = sn.compute_stats(split(x, [3, 5]), layout="NF", histogram=True)
    expected = RobustScaler().fit(x.astype(np.float64)).transform(x.astype(np.float64))
    y = sn.Normalizer.from_stats(stats, "robust")(x, dtype=np.float64)
    assert_close_to_scale(y, expected, 4)


@settings(max_examples=60, deadline=None)
@given(st.floats(-1e6, 1e6), st.floats(1e-2, 1e2), st.integers(3, 60), st.booleans())
def test_float32_output_keeps_float32_precision_on_offset_data(offset, std, rows, accelerator):
    """float32 in, float32 out: within a few float32 ulps of the output scale, offset or not."""
    rng = np.random.default_rng(rows)
    x = (offset + std * rng.normal(size=(rows, 2))).astype(np.float32)
    stats = sn.compute_stats([x], layout="NF")
    norm = sn.Normalizer.from_stats(stats)
    if np.any(norm.scale64.numpy() == 1.0):
        return
    expected = exact_zscore(x.astype(np.float64), stats.mean, stats.std)
    with pytest.MonkeyPatch.context() as mp:
        if accelerator:
            fused(mp)
        y = norm(torch.from_numpy(x)).numpy()
    scale = np.maximum(np.abs(expected).max(axis=0), 1.0)
    assert (np.abs(y - expected) / scale).max() <= 4 * np.finfo(np.float32).eps


def test_documented_scale_and_shift_are_kept():
    """``scale``/``shift`` still describe the map ``x * scale + shift`` (scikit-learn's scale_, min_)."""
    x = np.array([[1e8 + 1, 3.0], [1e8 + 5, 7.0], [1e8 + 2, 4.0]])
    norm = sn.Normalizer.from_stats(sn.compute_stats([x], layout="NF"), "minmax")
    sk = MinMaxScaler().fit(x)
    np.testing.assert_array_equal(norm.scale64.numpy(), sk.scale_)
    np.testing.assert_array_equal(norm.shift64.numpy(), sk.min_)
    assert norm.scale.dtype == torch.float32 and norm.shift.dtype == torch.float32
    np.testing.assert_array_equal(norm(x, dtype=np.float64)[:, 0], [0.0, 1.0, 0.25])


# -- CUDA ---------------------------------------------------------------------------------
@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("mode", sorted(RANGES))
def test_cuda_range_modes_stay_in_range(mode):
    low, high = RANGES[mode]
    rng = np.random.default_rng(7)
    device = torch.device("cuda")
    for dtype in (np.uint8, np.int32, np.float16, np.float32, np.float64):
        for _ in range(20):
            offset, spread = rng.uniform(-1e3, 1e3), 10 ** rng.uniform(-1, 3)
            x = (offset + spread * rng.random((257, 3))).astype(dtype)
            norm = sn.Normalizer.from_stats(sn.compute_stats([x], layout="NF"), mode).to(device)
            t = torch.from_numpy(x).to(device)
            for out_dtype in OUT_DTYPES:
                y = norm(t, dtype=out_dtype).double()
                assert torch.all(y[t == t.amin(0, keepdim=True)] == low)
                assert torch.all((y >= low) & (y <= high))


@pytest.mark.cuda
@cuda
def test_cuda_computes_in_documented_dtype_and_precision():
    device = torch.device("cuda")
    norm = sn.Normalizer.from_range(0, 255).to(device)
    bits = torch.arange(0, 0x3F81, dtype=torch.int32).to(torch.int16)
    y = bits.view(torch.bfloat16).to(device)
    assert torch.equal(norm.inverse(y, dtype=torch.float32).double(), y.double() * 255)
    x = torch.tensor([1.0, 3.0, 254.0], dtype=torch.float32, device=device) + 1e-5
    torch.testing.assert_close(norm(x, dtype=torch.float64), x.double() / 255, rtol=2e-16, atol=0)
    rng = np.random.default_rng(3)
    data = 1e8 + rng.normal(size=(1000, 2))
    stats = sn.compute_stats([data], layout="NF")
    on = sn.Normalizer.from_stats(stats).to(device)
    expected = exact_zscore(data, stats.mean, stats.std)
    got = on(torch.from_numpy(data).to(device), dtype=torch.float64).cpu().numpy()
    assert_close_to_scale(got, expected, 4)


def test_maps_beyond_float32_are_evaluated_in_float64():
    """A scale or range float32 cannot hold (std 1e-40, ends past 3.4e38): float64 arithmetic."""
    x = np.array([[0.0], [1e-45]], dtype=np.float32)
    stats = sn.compute_stats([x], layout="NF")
    y = sn.Normalizer.from_stats(stats)(x)  # std 7e-46: its inverse overflows float32
    np.testing.assert_array_equal(y, [[-1.0], [1.0]])
    tiny = sn.Normalizer.from_mean_std(0.0, 1e-40)
    torch.testing.assert_close(tiny(torch.tensor([0.0, 1e-45])), torch.tensor([0.0, 1e-45 / 1e-40]))
    torch.testing.assert_close(tiny.inverse(torch.tensor([1.0])), torch.tensor([1e-40]))
    wide = sn.Normalizer.from_range(-1e38, 3e38)
    torch.testing.assert_close(wide.inverse(torch.tensor([0.0, 1.0])), torch.tensor([-1e38, 3e38]))
    assert wide(torch.tensor([255], dtype=torch.uint8)).item() == 0.25


def test_float_zscore_center_keeps_the_digits_of_shift_and_shifted_mean():
    # data far from zero: the plain float64 mean is off by up to half an ulp of 1e9
    # (6e-8), which shift + shifted_mean do not lose
    rng = np.random.default_rng(7)
    x = 1e9 + rng.standard_normal((2000, 2))
    stats = sn.compute_stats([x], layout="NF")
    z = sn.Normalizer.from_stats(stats)(torch.from_numpy(x), dtype=torch.float64).numpy()
    for f in range(2):
        col = [Fraction(v) for v in x[:, f]]
        mean = sum(col) / len(col)
        std = float(stats.std[f])
        reference = np.array([float((v - mean) / Fraction(std)) for v in col])
        assert np.max(np.abs(z[:, f] - reference)) <= 1e-12
