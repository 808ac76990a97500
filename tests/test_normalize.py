"""Normalizer: every mode against closed forms and scikit-learn, dtypes, layouts, inverse."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.datasets import load_digits, load_wine
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

import streamnorm as sn
from streamnorm.errors import DTypeError, LayoutError, StreamnormError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
FIXTURES = Path(__file__).parent / "fixtures"


def batches(x: np.ndarray, size: int):
    return [x[i : i + size] for i in range(0, len(x), size)]


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().data  # float64 0..16, three constant pixels


@pytest.fixture(scope="module")
def wine() -> np.ndarray:
    return load_wine().data  # float64, offsets up to ~750, mixed scales


# -- scikit-learn as the oracle ---------------------------------------------
@pytest.mark.parametrize("source", ["digits", "wine"])
@pytest.mark.parametrize("batch", [7, 64, 10_000])
def test_zscore_matches_standard_scaler(source, batch, request):
    x = request.getfixturevalue(source)
    stats = sn.compute_stats(batches(x, batch), layout="NF")
    norm = sn.Normalizer.from_stats(stats, "zscore")
    expected = StandardScaler().fit(x).transform(x)
    # |y| reaches 39 on digits' rarest pixels: relative 1e-13 there
    np.testing.assert_allclose(norm(x, dtype=np.float64), expected, rtol=1e-13, atol=1e-12)
    y32 = norm(torch.from_numpy(x))  # float64 input: evaluated in float64, rounded once
    assert y32.dtype == torch.float32
    np.testing.assert_array_equal(y32.numpy(), expected.astype(np.float32))


def test_zscore_integer_path_matches_standard_scaler(digits):
    x8 = digits.astype(np.uint8)
    stats = sn.compute_stats(batches(x8, 100), layout="NF")
    assert stats.is_exact
    norm = sn.Normalizer.from_stats(stats)
    expected = StandardScaler().fit(digits).transform(digits)
    np.testing.assert_allclose(norm(x8, dtype=np.float64), expected, rtol=1e-13, atol=1e-12)
    # float32 arithmetic: within a few float32 ulps of the float64 result
    np.testing.assert_allclose(norm(x8), expected, rtol=0, atol=4e-6)


@pytest.mark.parametrize("mode,feature_range", [("minmax", (0, 1)), ("symmetric", (-1, 1))])
@pytest.mark.parametrize("source", ["digits", "wine"])
def test_range_modes_match_minmax_scaler(mode, feature_range, source, request):
    x = request.getfixturevalue(source)
    stats = sn.compute_stats(batches(x, 50), layout="NF")
    norm = sn.Normalizer.from_stats(stats, mode)
    scaler = MinMaxScaler(feature_range=feature_range).fit(x)
    np.testing.assert_allclose(norm(x, dtype=np.float64), scaler.transform(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(norm.scale64.numpy(), scaler.scale_, rtol=0, atol=0)
    np.testing.assert_allclose(norm.shift64.numpy(), scaler.min_, rtol=0, atol=0)
    back = norm.inverse(norm(x, dtype=np.float64))
    np.testing.assert_allclose(back, scaler.inverse_transform(scaler.transform(x)), atol=1e-10)


def test_robust_matches_robust_scaler(digits):
    x8 = digits.astype(np.uint8)
    stats = sn.compute_stats(batches(x8, 128), layout="NF", histogram=True)
    norm = sn.Normalizer.from_stats(stats, "robust")
    expected = RobustScaler().fit(digits).transform(digits)
    np.testing.assert_allclose(norm(x8, dtype=np.float64), expected, rtol=0, atol=1e-12)


def test_ddof_matches_numpy(wine):
    stats = sn.compute_stats(batches(wine, 13), layout="NF")
    y = sn.Normalizer.from_stats(stats, "zscore", ddof=1)(wine, dtype=np.float64)
    expected = (wine - wine.mean(0)) / wine.std(0, ddof=1)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)


# -- closed forms on image layouts --------------------------------------------
image_layouts = st.sampled_from(["NCHW", "NHWC", "NCL", "NF", "CHW", "HWC"])


@st.composite
def image_batches(draw):
    layout = draw(image_layouts)
    shape = draw(hnp.array_shapes(min_dims=len(layout), max_dims=len(layout), min_side=1,
                                  max_side=5))
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.float32, np.float64]))
    if np.dtype(dtype).kind == "f":
        elements = st.floats(-1e3, 1e3, width=np.dtype(dtype).itemsize * 8)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    return layout, x


def reduce_axes(layout: str) -> tuple[int, ...]:
    return tuple(i for i, ch in enumerate(layout) if ch not in "CF")


def keep(layout: str, v: np.ndarray) -> np.ndarray:
    return np.expand_dims(v, reduce_axes(layout))


@settings(max_examples=60, deadline=None)
@given(image_batches(), st.sampled_from(["zscore", "minmax", "symmetric"]))
def test_modes_match_closed_forms(case, mode):
    layout, x = case
    stats = sn.compute_stats([x], layout=layout)
    norm = sn.Normalizer.from_stats(stats, mode)
    xf = x.astype(np.float64)
    axes = reduce_axes(layout)
    eps = np.finfo(np.float64).eps
    if mode == "zscore":
        mean, var = xf.mean(axis=axes), xf.var(axis=axes)
        n = x.size // mean.size
        # scikit-learn's rule: a variance within the two-pass rounding bound is 0
        const = var <= n * eps * var + (n * mean * eps) ** 2
        expected = (xf - keep(layout, mean)) / keep(layout, np.where(const, 1.0, np.sqrt(var)))
    else:
        lo, hi = xf.min(axis=axes), xf.max(axis=axes)
        a, b = (0.0, 1.0) if mode == "minmax" else (-1.0, 1.0)
        rng = np.where(hi - lo < 10 * eps, 1.0, hi - lo)  # scikit-learn's rule
        expected = a + (xf - keep(layout, lo)) * (b - a) / keep(layout, rng)
    y = norm(x, dtype=np.float64)
    assert y.shape == x.shape and y.dtype == np.float64 and np.isfinite(y).all()
    np.testing.assert_allclose(y, expected, rtol=1e-9, atol=1e-9)
    y32 = norm(torch.from_numpy(x))
    assert y32.dtype == torch.float32
    np.testing.assert_allclose(y32.numpy(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["zscore", "minmax", "symmetric", "robust"])
def test_constant_features_stay_finite(mode):
    x = np.zeros((10, 3), np.uint8)
    x[:, 0] = np.arange(10)
    x[:, 1] = 7
    x[:, 2] = 255
    stats = sn.compute_stats([x], layout="NF", histogram=True)
    norm = sn.Normalizer.from_stats(stats, mode)
    y = norm(x, dtype=np.float64)
    assert np.isfinite(y).all()
    low = {"zscore": 0.0, "robust": 0.0, "minmax": 0.0, "symmetric": -1.0}[mode]
    np.testing.assert_array_equal(y[:, 1:], low)  # documented constant outcome
    # the constant's range (or std, or IQR) is taken as 1
    width = 2.0 if mode == "symmetric" else 1.0
    np.testing.assert_array_equal(norm.scale64.numpy()[1:], width)
    back = norm.inverse(norm(x), dtype=np.uint8)
    np.testing.assert_array_equal(back, x)


def test_float_constant_feature_detected_like_sklearn():
    x = np.full((1000, 2), 0.1)
    x[:, 1] = np.linspace(0, 1, 1000)
    stats = sn.compute_stats(batches(x, 33), layout="NF")
    y = sn.Normalizer.from_stats(stats)(x, dtype=np.float64)
    np.testing.assert_allclose(y, StandardScaler().fit(x).transform(x), rtol=0, atol=1e-12)


# -- dtypes --------------------------------------------------------------------
@pytest.mark.parametrize("in_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32,
                                      torch.int64, torch.bool, torch.uint16, torch.float16,
                                      torch.bfloat16, torch.float32, torch.float64])
def test_input_dtypes(in_dtype):
    gen = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 2 if in_dtype == torch.bool else 100, (4, 3, 5, 5), generator=gen)
    x = raw.to(in_dtype)
    norm = sn.Normalizer.from_mean_std([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    y = norm(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    expected = (x.double() - torch.tensor([1.0, 2, 3]).view(3, 1, 1)) / torch.tensor(
        [2.0, 3, 4]).view(3, 1, 1)
    torch.testing.assert_close(y.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_output_dtypes_round_once(out_dtype):
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    norm = sn.Normalizer.from_mean_std([120.0, 110.0, 100.0], [60.0, 58.0, 57.0])
    y = norm(x, dtype=out_dtype)
    assert y.dtype == out_dtype
    if out_dtype == torch.float64:
        expected = x.double() * norm.scale64.view(3, 1, 1) + norm.shift64.view(3, 1, 1)
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-14)
    else:
        # float32 arithmetic, one rounding to the half type
        torch.testing.assert_close(y, norm(x).to(out_dtype), rtol=0, atol=0)


def test_numpy_in_numpy_out():
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    norm = sn.Normalizer.from_mean_std([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], layout="NHWC")
    for dt in (np.float32, np.float16, np.float64, "float32"):
        y = norm(x, dtype=dt)
        assert isinstance(y, np.ndarray) and y.dtype == np.dtype(dt)
    ro = x.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(norm(ro), norm(x))
    big = x.astype(">u2")
    np.testing.assert_array_equal(norm(big), norm(x))
    flipped = x[::-1]
    np.testing.assert_array_equal(norm(flipped), norm(x)[::-1])
    with pytest.raises(DTypeError, match="numpy has no"):
        norm(x, dtype=torch.bfloat16)


def test_bad_dtypes():
    norm = sn.Normalizer.from_range(0, 255)
    with pytest.raises(DTypeError, match="must be floating"):
        norm(torch.zeros(3), dtype=torch.int32)
    with pytest.raises(DTypeError, match="torch.Tensor or numpy"):
        norm([1, 2, 3])
    with pytest.raises(DTypeError):
        norm(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(DTypeError):
        norm(np.array(["a"]))
    with pytest.raises(DTypeError):
        norm.inverse(torch.zeros(3), dtype=torch.bool)


def test_out_buffer():
    x = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    norm = sn.Normalizer.from_mean_std([100.0, 110.0, 120.0], [50.0, 51.0, 52.0])
    for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        buf = torch.empty(x.shape, dtype=dt).contiguous(memory_format=torch.channels_last)
        assert norm(x, out=buf) is buf
        torch.testing.assert_close(buf, norm(x, dtype=dt), rtol=0, atol=0)
    with pytest.raises(StreamnormError, match="needs the input's"):
        norm(x, out=torch.empty(4, 3, 6, 5))
    with pytest.raises(DTypeError, match="must be floating"):
        norm(x, out=torch.empty(x.shape, dtype=torch.int32))
    with pytest.raises(DTypeError, match="out= takes a torch.Tensor"):
        norm(x.numpy(), out=torch.empty(x.shape))
    with pytest.raises(StreamnormError, match="per-sample"):
        sn.Normalizer.per_sample()(x, out=torch.empty(x.shape))


# -- layouts -------------------------------------------------------------------
def test_channels_last_preserved():
    x = torch.randint(0, 256, (4, 3, 8, 9), dtype=torch.uint8)
    xl = x.contiguous(memory_format=torch.channels_last)
    norm = sn.Normalizer.from_mean_std([100.0, 110.0, 120.0], [50.0, 51.0, 52.0])
    for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        y = norm(xl, dtype=dt)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert y.stride() == xl.stride()
        torch.testing.assert_close(y, norm(x, dtype=dt), rtol=0, atol=0)
    back = norm.inverse(norm(xl), dtype=torch.uint8)
    assert back.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(back, xl)


def test_nhwc_stats_and_layout_override():
    rng = np.random.default_rng(1)
    nhwc = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    stats = sn.compute_stats([nhwc], layout="NHWC")
    norm = sn.Normalizer.from_stats(stats)
    nchw = torch.from_numpy(nhwc).permute(0, 3, 1, 2)  # a channels_last NCHW view
    by_override = sn.Normalizer.from_stats(stats, layout="NCHW")(nchw)
    torch.testing.assert_close(by_override.permute(0, 2, 3, 1), norm(torch.from_numpy(nhwc)))
    assert norm.with_layout("NCHW")(nchw).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(LayoutError, match="NCHW vs NHWC"):
        norm(nchw)  # NHWC normalizer, NCHW tensor: 4 'features' on the last axis


def test_single_sample_rank():
    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    norm = sn.Normalizer.from_mean_std([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    for i in range(5):
        torch.testing.assert_close(norm(x[i]), norm(x)[i], rtol=0, atol=0)


def test_layout_errors_name_both_sides():
    norm = sn.Normalizer.from_mean_std([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(LayoutError, match=r"has 4 features on axis 1.*normalizer\s+has 3"):
        norm(torch.zeros(2, 4, 5, 5))
    with pytest.raises(LayoutError, match="needs 4"):
        norm(torch.zeros(2, 3))
    assert isinstance(LayoutError("x"), StreamnormError)


def test_scalar_range_any_rank():
    norm = sn.Normalizer.from_range(0, 255)
    assert norm.layout == "N" and norm.n_features == 1
    for shape in [(), (7,), (2, 3, 4, 5), (1, 2, 3, 4, 5)]:
        x = torch.randint(0, 256, shape, dtype=torch.uint8)
        torch.testing.assert_close(norm(x, dtype=torch.float64), x.double() / 255)
    nchw = sn.Normalizer.from_range(0, 255, layout="NCHW")  # scalars: every channel
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    torch.testing.assert_close(nchw(x), norm(x), rtol=0, atol=0)
    cfg = json.loads(json.dumps(nchw.get_config()))
    assert isinstance(cfg["scale"], float)
    torch.testing.assert_close(sn.Normalizer.from_config(cfg)(x), norm(x), rtol=0, atol=0)


def test_per_feature_range():
    low, high = [0.0, -5.0, 10.0], [255.0, 5.0, 20.0]
    norm = sn.Normalizer.from_range(low, high, "symmetric", layout="NF")
    x = torch.tensor([low, high, [127.5, 0.0, 15.0]], dtype=torch.float64)
    torch.testing.assert_close(norm(x, dtype=torch.float64),
                               torch.tensor([[-1.0] * 3, [1.0] * 3, [0.0] * 3],
                                            dtype=torch.float64))
    with pytest.raises(StreamnormError, match="finite low < high"):
        sn.Normalizer.from_range([0, 5], [1, 5])
    with pytest.raises(StreamnormError, match="mode 'minmax' or 'symmetric'"):
        sn.Normalizer.from_range(0, 1, "zscore")


# -- inverse ---------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=4, max_dims=4, max_side=6)),
       st.sampled_from(["zscore", "minmax", "symmetric", "robust"]),
       st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_uint8_round_trip(x, mode, dtype):
    stats = sn.compute_stats([x], layout="NCHW", histogram=True)
    norm = sn.Normalizer.from_stats(stats, mode)
    y = norm(torch.from_numpy(x), dtype=dtype)
    back = norm.inverse(y, dtype=torch.uint8)
    # half types keep 11 (8) significant bits: one uint8 step at most
    tol = 0 if dtype == torch.float32 else 1
    assert (back.int() - torch.from_numpy(x).int()).abs().max() <= tol


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float64, (20, 3), elements=st.floats(-1e6, 1e6)))
def test_float64_round_trip(x):
    norm = sn.Normalizer.from_stats(sn.compute_stats([x], layout="NF"))
    back = norm.inverse(norm(x, dtype=np.float64))
    assert back.dtype == np.float64
    np.testing.assert_allclose(back, x, rtol=1e-12, atol=1e-9 * max(1.0, np.abs(x).max()))


@pytest.mark.parametrize("target", [torch.uint8, torch.int8, torch.int16, torch.uint16,
                                    torch.int32, torch.int64])
def test_inverse_integer_clamps(target):
    info = torch.iinfo(target)
    norm = sn.Normalizer.from_range(0, 1)  # identity
    y = torch.tensor([-1e30, float(info.min) - 3, -0.5, 0.5, 1.5, 2.5, float(info.max) + 7,
                      1e30, float("inf"), float("-inf"), float("nan")], dtype=torch.float64)
    out = norm.inverse(y, dtype=target)
    assert out.dtype == target
    expected = [info.min, info.min, 0, 0, 2, 2, info.max, info.max, info.max, info.min, 0]
    assert out.tolist() == expected  # rounded half to even, clamped, NaN -> 0


def test_inverse_defaults_and_numpy():
    norm = sn.Normalizer.from_range(0, 255)
    y = norm(np.arange(256, dtype=np.uint8))
    assert norm.inverse(y).dtype == np.float32
    assert norm.inverse(y.astype(np.float64)).dtype == np.float64
    np.testing.assert_array_equal(norm.inverse(y, dtype=np.uint8), np.arange(256))
    assert norm.inverse(torch.from_numpy(y)).dtype == torch.float32


def test_inverse_keeps_autograd():
    norm = sn.Normalizer.from_mean_std([1.0], [2.0], layout="NF")
    y = torch.ones(4, 1, requires_grad=True)
    x = norm.inverse(y)
    x.sum().backward()
    torch.testing.assert_close(y.grad, torch.full((4, 1), 2.0))


# -- per-sample --------------------------------------------------------------------
@pytest.mark.parametrize("per_feature", [False, True])
def test_per_sample_matches_numpy(per_feature):
    x = np.random.default_rng(3).integers(0, 256, (5, 3, 6, 7), dtype=np.uint8)
    x[2] = 9  # a constant sample
    norm = sn.Normalizer.per_sample("NCHW", eps=1e-5, per_feature=per_feature)
    y = norm(x, dtype=np.float64)
    axes = (2, 3) if per_feature else (1, 2, 3)
    xf = x.astype(np.float64)
    mean, var = xf.mean(axis=axes, keepdims=True), xf.var(axis=axes, keepdims=True)
    expected = np.where(var > 0, (xf - mean) / np.sqrt(var + 1e-5), 0.0)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(norm(torch.from_numpy(x)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(norm(x[1], dtype=np.float64), expected[1], atol=1e-12)
    assert norm.mode == "per_sample" and norm.n_features is None and norm.scale is None
    with pytest.raises(StreamnormError, match="cannot be inverted"):
        norm.inverse(y)


def test_per_sample_channels_last_and_zero_eps():
    x = torch.randint(0, 256, (3, 3, 5, 5), dtype=torch.uint8)
    xl = x.contiguous(memory_format=torch.channels_last)
    norm = sn.Normalizer.per_sample(eps=0.0)
    y = norm(xl)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, norm(x), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(norm(torch.zeros(2, 3, 4, 4))).all()
    with pytest.raises(StreamnormError):
        sn.Normalizer.per_sample(eps=-1)


# -- construction errors -------------------------------------------------------------
def test_from_stats_errors():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    stats = sn.compute_stats([x], layout="NF")
    with pytest.raises(StreamnormError, match="histogram=True"):
        sn.Normalizer.from_stats(stats, "robust")
    with pytest.raises(StreamnormError, match="not one of"):
        sn.Normalizer.from_stats(stats, "l2")
    with pytest.raises(StreamnormError, match="needs a streamnorm.Stats"):
        sn.Normalizer.from_stats({"mean": 1})
    nan = np.full((3, 2), np.nan)
    nan[:, 0] = 1.0
    empty = sn.compute_stats([nan], layout="NF", nan_policy="omit")
    with pytest.raises(StreamnormError, match=r"\['1'\] have no values"):
        sn.Normalizer.from_stats(empty)
    with pytest.raises(StreamnormError, match="non-zero"):
        sn.Normalizer([0.0, 1.0], [0.0, 0.0])


# -- devices, caching, pickling, config ------------------------------------------------
def test_to_moves_once_and_shares_cache():
    norm = sn.Normalizer.from_mean_std([1.0, 2.0], [3.0, 4.0], layout="NF")
    assert norm.to("cpu") is norm
    assert norm.scale.dtype == torch.float32 and norm.scale64.dtype == torch.float64
    np.testing.assert_array_equal(norm.scale64.numpy(), [1 / 3, 1 / 4])
    x = torch.zeros(5, 2)
    norm(x)
    cached = dict(norm._cache)
    for _ in range(5):
        norm(x)
    assert norm._cache.keys() == cached.keys()
    assert all(norm._cache[k][0] is cached[k][0] for k in cached)
    with pytest.raises(StreamnormError, match="device="):
        norm.to("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(StreamnormError, match="CUDA is not available"):
            norm.to("cuda")


def test_pickle_round_trip():
    norm = sn.Normalizer.from_mean_std([1.0, 2.0], [3.0, 4.0], layout="NF")
    clone = pickle.loads(pickle.dumps(norm))
    x = torch.rand(4, 2)
    torch.testing.assert_close(clone(x), norm(x), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["zscore", "minmax", "symmetric", "robust"])
def test_config_round_trip(mode):
    x = np.random.default_rng(5).integers(0, 256, (4, 3, 5, 5), dtype=np.uint8)
    norm = sn.Normalizer.from_stats(sn.compute_stats([x], histogram=True), mode)
    cfg = json.loads(json.dumps(norm.get_config(), allow_nan=False))
    clone = sn.Normalizer.from_config(cfg)
    assert clone.get_config() == norm.get_config()
    assert (clone.mode, clone.layout, clone.n_features, clone.source_dtype) == (
        mode, "NCHW", 3, "uint8")
    torch.testing.assert_close(clone(torch.from_numpy(x), torch.float64),
                               norm(torch.from_numpy(x), torch.float64), rtol=0, atol=0)
    ps = sn.Normalizer.per_sample("NHWC", eps=0.5, per_feature=True)
    assert sn.Normalizer.from_config(json.loads(json.dumps(ps.get_config()))).get_config() == (
        ps.get_config())


def test_golden_config_fixture():
    golden = json.loads((FIXTURES / "normalizer_config_v1.json").read_text())
    norm = sn.Normalizer.from_config(golden["config"])
    assert norm.get_config() == golden["config"]
    x = np.array(golden["input"], dtype=golden["input_dtype"])
    scale = np.array(golden["config"]["scale"]).reshape(-1, 1, 1)
    shift = np.array(golden["config"]["shift"]).reshape(-1, 1, 1)
    np.testing.assert_allclose(norm(x, dtype=np.float64), x * scale + shift, rtol=0, atol=1e-15)
    # the stored output pins the meaning of the config; the last ulp may vary (FMA)
    np.testing.assert_allclose(norm(x, dtype=np.float64), np.array(golden["output_float64"]),
                               rtol=1e-15, atol=1e-15)


def test_config_keeps_the_evaluated_map_and_refuses_edits():
    """Configs carry center/offset (and a range's upper end), so a reloaded map evaluates alike."""
    x = (1e8 + np.arange(12, dtype=np.float64)).reshape(6, 2)
    for norm in (sn.Normalizer.from_stats(sn.compute_stats([x], layout="NF"), "zscore"),
                 sn.Normalizer.from_stats(sn.compute_stats([x], layout="NF"), "symmetric"),
                 sn.Normalizer.from_range(0.1, 0.7)):
        cfg = json.loads(json.dumps(norm.get_config(), allow_nan=False))
        assert "center" in cfg and "offset" in cfg
        clone = sn.Normalizer.from_config(cfg)
        for dt in (np.float32, np.float64):
            np.testing.assert_array_equal(clone(x, dtype=dt), norm(x, dtype=dt))
        edited = dict(cfg, shift=[v + 1 for v in cfg["shift"]] if isinstance(cfg["shift"], list)
                      else cfg["shift"] + 1)
        with pytest.raises(StreamnormError, match="shift disagrees"):
            sn.Normalizer.from_config(edited)
    # a map given as scale and shift keeps the plain form (the v1 fixture's)
    assert "center" not in sn.Normalizer([2.0], [1.0], layout="NF").get_config()


def test_config_errors():
    cfg = sn.Normalizer.from_range(0, 255).get_config()
    with pytest.raises(StreamnormError, match="upgrade streamnorm"):
        sn.Normalizer.from_config({**cfg, "version": 99})
    with pytest.raises(StreamnormError, match="not a streamnorm Normalizer config"):
        sn.Normalizer.from_config({"id": "blosc"})
    with pytest.raises(StreamnormError, match="lacks the field 'shift'"):
        sn.Normalizer.from_config({k: v for k, v in cfg.items() if k != "shift"})


def test_from_store(tmp_path):
    rng = np.random.default_rng(9)
    train = rng.integers(0, 256, (8, 3, 4, 4), dtype=np.uint8)
    val = rng.integers(0, 100, (8, 3, 4, 4), dtype=np.uint8)
    for root in (str(tmp_path), "memory://normalize-from-store"):
        sn.save_stats(sn.compute_stats([train]), root, "train", overwrite=True)
        sn.save_stats(sn.compute_stats([val]), root, "val", overwrite=True)
        norm = sn.Normalizer.from_store(root, mode="minmax", storage_options={})
        expected = sn.Normalizer.from_stats(sn.compute_stats([train]), "minmax")
        assert norm.get_config() == expected.get_config()  # the train split by default
        other = sn.Normalizer.from_store(root, "val", layout="NHWC")
        assert other.layout == "NHWC" and other.mode == "zscore"
        np.testing.assert_allclose(other.shift64.numpy(), -val.mean(axis=(0, 2, 3))
                                   / val.std(axis=(0, 2, 3)), rtol=1e-14)
    with pytest.raises(StreamnormError):
        sn.Normalizer.from_store(str(tmp_path), "test")


# -- CUDA --------------------------------------------------------------------------------
@pytest.mark.cuda
@cuda
def test_cuda_matches_cpu_and_keeps_device():
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    norm = sn.Normalizer.from_mean_std([120.0, 110.0, 100.0], [60.0, 58.0, 57.0])
    on = norm.to(device)
    assert on.scale.device == device and norm.scale.device.type == "cpu"
    for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        xl = x.to(device).contiguous(memory_format=torch.channels_last)
        y = on(xl, dtype=dt)
        assert y.device == device and y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y.cpu(), norm(x, dtype=dt), rtol=1e-6, atol=1e-6)
    back = on.inverse(on(x.to(device)), dtype=torch.uint8)
    assert torch.equal(back.cpu(), x)
    ps = sn.Normalizer.per_sample()
    torch.testing.assert_close(ps(x.to(device)).cpu(), ps(x), rtol=1e-5, atol=1e-5)


# -- memory layouts of the CPU evaluation ---------------------------------------------
VIEWS = {
    "contiguous": lambda t: t,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "sliced": lambda t: t[:, :, ::2],
    "transposed_hw": lambda t: t.transpose(2, 3),
    "expanded": lambda t: t[:1].expand(t.shape[0], -1, -1, -1),
    "flipped_view": lambda t: t.permute(0, 3, 2, 1).contiguous().permute(0, 3, 2, 1),
}


@settings(max_examples=60, deadline=None)
@given(st.tuples(st.integers(1, 6), st.just(3), st.integers(1, 40), st.integers(1, 40)),
       st.sampled_from(sorted(VIEWS)),
    st.sampled_from([torch.float32, torch.float16, torch.float64]), st.booleans())
def test_memory_layouts_agree(shape, view, out_dtype, with_out):
    gen = torch.Generator().manual_seed(int(np.prod(shape)))
    x = VIEWS[view](torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen))
    norm = sn.Normalizer.from_mean_std([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
    out = torch.empty(x.shape, dtype=out_dtype) if with_out else None
    y = norm(x, dtype=out_dtype, out=out)
    assert y.shape == x.shape and y.dtype == out_dtype and (out is None or y is out)
    expected = (x.double() - torch.tensor([123.675, 116.28, 103.53], dtype=torch.float64).view(
        3, 1, 1)) / torch.tensor([58.395, 57.12, 57.375], dtype=torch.float64).view(3, 1, 1)
    tol = {torch.float16: 2e-3, torch.float32: 1e-6, torch.float64: 1e-14}[out_dtype]
    torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol)
    if not with_out and view == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    nhwc = norm.with_layout("NHWC")(x.permute(0, 2, 3, 1), dtype=out_dtype)
    torch.testing.assert_close(nhwc.permute(0, 3, 1, 2), y, rtol=0, atol=0)
