"""mode="quantile" ([q_lo, q_hi] -> [-1, 1], optional clip) and mode="robust" through the distribution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from streamnorm._affine import evaluate

FIXTURE_V1 = Path(__file__).resolve().parent / "fixtures" / "normalizer_config_v1.json"


def uint8_data(seed: int, n: int = 300, f: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(120, 40, (n, f)), 0, 255).astype(np.uint8)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 0.49), st.floats(0.51, 1.0), st.sampled_from(["uint8", "int8"]))
def test_quantile_mode_matches_the_numpy_oracle(seed, q_lo, q_hi, dtype):
    x = uint8_data(seed).astype(np.int16)
    x = (x - 128).astype(dtype) if dtype == "int8" else x.astype(dtype)
    stats = sn.compute_stats([x[:100], x[100:]], layout="NF", histogram=True)
    norm = sn.Normalizer.from_stats(stats, mode="quantile", quantiles=(q_lo, q_hi))
    lo, hi = np.quantile(x.astype(np.float64), [q_lo, q_hi], axis=0)
    span = np.where(hi - lo < 10 * np.finfo(np.float64).eps, 1.0, hi - lo)
    want = (x - lo) * (2.0 / span) - 1.0
    got = norm(x, dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.array_equal(norm(lo[None].astype(dtype), dtype=np.float64)[0], np.full(x.shape[1], -1.0)) or \
        not np.array_equal(lo, np.round(lo))  # a quantile that is a value maps to -1 exactly
    y32 = norm(torch.from_numpy(x))
    assert y32.dtype == torch.float32
    np.testing.assert_allclose(y32.numpy(), want, rtol=1e-5, atol=1e-5)


def test_clip_clamps_to_minus_one_one_and_the_inverse_is_exact_inside():
    x = uint8_data(1)
    stats = sn.compute_stats([x], layout="NF", histogram=True)
    norm = sn.Normalizer.from_stats(stats, mode="quantile", quantiles=(0.05, 0.95), clip=True)
    free = sn.Normalizer.from_stats(stats, mode="quantile", quantiles=(0.05, 0.95))
    for out in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        y = norm(torch.from_numpy(x), dtype=out)
        assert y.dtype == out and float(y.min()) >= -1.0 and float(y.max()) <= 1.0
        assert (y == 1).any() and (y == -1).any()
    y = norm(x, dtype=np.float64)
    yf = free(x, dtype=np.float64)
    inside = np.abs(yf) <= 1
    assert np.array_equal(y[inside], yf[inside]) and np.array_equal(y[~inside], np.sign(yf[~inside]))
    back = norm.inverse(y, dtype=np.float64)
    np.testing.assert_allclose(back[inside], x[inside], rtol=0, atol=1e-9)
    lo, hi = stats.quantile([0.05, 0.95])
    bounds = np.where(yf > 1, hi, lo)
    np.testing.assert_allclose(back[~inside], np.broadcast_to(bounds, x.shape)[~inside], atol=1e-9)


def test_clip_keeps_nan_and_the_autograd_path_clips_too():
    stats = sn.compute_stats([np.arange(100, dtype=np.uint8).reshape(-1, 1)], layout="NF", histogram=True)
    norm = sn.Normalizer.from_stats(stats, "quantile", quantiles=(0.1, 0.9), clip=True)
    y = norm(torch.tensor([[float("nan")], [500.0], [-500.0]]))
    assert torch.isnan(y[0]).all() and y[1:, 0].tolist() == [1.0, -1.0]
    x = torch.tensor([[500.0], [50.0]], requires_grad=True)
    y = norm(x)
    assert y.requires_grad and y[:, 0].detach().tolist()[0] == 1.0
    y.sum().backward()
    assert x.grad[0, 0] == 0 and x.grad[1, 0] > 0


@pytest.mark.parametrize("layout, shape", [("NCHW", (2, 3, 4, 5)), ("NHWC", (2, 4, 5, 3))])
def test_clip_on_image_layouts_and_channels_last_memory(layout, shape):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    stats = sn.compute_stats([x], layout=layout, histogram=True)
    norm = sn.Normalizer.from_stats(stats, "quantile", quantiles=(0.2, 0.8), clip=True)
    t = torch.from_numpy(x)
    if layout == "NCHW":
        t = t.contiguous(memory_format=torch.channels_last)
    y = norm(t)
    assert float(y.min()) == -1.0 and float(y.max()) == 1.0
    free = sn.Normalizer.from_stats(stats, "quantile", quantiles=(0.2, 0.8))(t)
    assert torch.equal(y, free.clamp(-1, 1))


def test_evaluate_clips_on_the_fused_device_path(monkeypatch):
    # the accelerator path (addcmul into out, then clamp_) run on the CPU: same result as the slab path
    import streamnorm._affine as A

    x = torch.arange(-5, 6, dtype=torch.int16).reshape(-1, 1)
    c, s, o = (torch.tensor([[v]], dtype=torch.float32) for v in (0.0, 0.25, 0.0))
    slab = evaluate(x, c, s, o, torch.float16, torch.float32, clip=(-1.0, 1.0))
    monkeypatch.setattr(A, "_fuses", lambda device: True)
    fused = A.evaluate(x, c, s, o, torch.float16, torch.float32, clip=(-1.0, 1.0))
    assert torch.equal(slab, fused) and fused.dtype == torch.float16
    assert fused[:, 0].tolist() == [-1.0, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


@pytest.mark.parametrize("clip", [False, True])
def test_quantile_config_round_trips_through_json(clip):
    stats = sn.compute_stats([uint8_data(3)], layout="NF", histogram=True, feature_names=["a", "b", "c"])
    norm = sn.Normalizer.from_stats(stats, "quantile", quantiles=(0.01, 0.99), clip=clip)
    cfg = json.loads(json.dumps(norm.get_config()))
    assert cfg["mode"] == "quantile" and ("clip" in cfg) == clip and cfg["version"] == (2 if clip else 1)
    again = sn.Normalizer.from_config(cfg)
    assert again.get_config() == norm.get_config()
    x = torch.from_numpy(uint8_data(4)).to(torch.float32) * 3 - 100
    assert torch.equal(again(x), norm(x))


def test_committed_v1_config_still_loads():
    cfg = json.loads(FIXTURE_V1.read_text())["config"]
    norm = sn.Normalizer.from_config(cfg)
    assert norm.get_config()["version"] == 1


def test_a_config_with_a_bad_clip_is_refused():
    stats = sn.compute_stats([uint8_data(3)], layout="NF", histogram=True)
    cfg = sn.Normalizer.from_stats(stats, "quantile", clip=True).get_config()
    for bad in ([1.0, -1.0], "x", [1.0]):
        with pytest.raises(sn.StreamnormError, match="clip"):
            sn.Normalizer.from_config({**cfg, "clip": bad})


@pytest.mark.parametrize("mode", ["quantile", "robust"])
def test_modes_that_need_a_distribution_name_histogram_true(mode):
    stats = sn.compute_stats([uint8_data(5)], layout="NF")
    with pytest.raises(sn.StreamnormError, match=rf"mode='{mode}' needs each feature's distribution.*histogram=True"):
        sn.Normalizer.from_stats(stats, mode)


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "quantile", "quantiles": (0.9, 0.1)}, "0 <= low < high <= 1"),
    ({"mode": "quantile", "quantiles": (0.1, 1.5)}, "0 <= low < high <= 1"),
    ({"mode": "quantile", "quantiles": 0.5}, "two numbers"),
    ({"mode": "quantile", "clip": "yes"}, "clip must be True or False"),
    ({"mode": "zscore", "clip": True}, "belong to mode='quantile'"),
    ({"mode": "minmax", "quantiles": (0.1, 0.9)}, "belong to mode='quantile'"),
])
def test_bad_quantile_arguments_are_refused(kwargs, match):
    stats = sn.compute_stats([uint8_data(5)], layout="NF", histogram=True)
    with pytest.raises(sn.StreamnormError, match=match):
        sn.Normalizer.from_stats(stats, **kwargs)


def test_quantile_mode_constant_feature_maps_to_minus_one():
    x = np.full((10, 1), 7, np.uint8)
    norm = sn.Normalizer.from_stats(sn.compute_stats([x], layout="NF", histogram=True), "quantile")
    assert norm(x).ravel().tolist() == [-1.0] * 10
    assert norm.inverse(norm(x)).ravel().tolist() == [7.0] * 10


def test_robust_on_8_bit_data_matches_numpy_median_and_iqr():
    x = uint8_data(6)
    stats = sn.compute_stats([x], layout="NF", histogram=True)
    med = np.median(x, axis=0)
    q1, q3 = np.quantile(x, [0.25, 0.75], axis=0)
    got = sn.Normalizer.from_stats(stats, "robust")(x, dtype=np.float64)
    np.testing.assert_allclose(got, (x - med) / (q3 - q1), rtol=1e-12)


def test_quantile_from_store_passes_quantiles_and_clip(tmp_path):
    stats = sn.compute_stats([uint8_data(7)], layout="NF", histogram=True)
    sn.save_stats(stats, str(tmp_path), "train")
    a = sn.Normalizer.from_store(str(tmp_path), mode="quantile", quantiles=(0.2, 0.8), clip=True)
    b = sn.Normalizer.from_stats(stats, "quantile", quantiles=(0.2, 0.8), clip=True)
    assert a.get_config() == b.get_config()


def test_robust_and_quantile_on_float_distributions():
    x = np.random.default_rng(0).normal(5, 2, (5000, 2)).astype(np.float32)
    s = sn.compute_stats([x], layout="NF", histogram=True)
    lo, hi = s.quantile([0.01, 0.99])
    y = sn.Normalizer.from_stats(s, "quantile")(x, dtype=np.float64)
    np.testing.assert_allclose(y, (x - lo) * (2 / (hi - lo)) - 1, rtol=1e-9, atol=1e-9)
    r = sn.Normalizer.from_stats(s, "robust")(x, dtype=np.float64)
    np.testing.assert_allclose(r, (x - s.median) / s.iqr, rtol=1e-9, atol=1e-9)
