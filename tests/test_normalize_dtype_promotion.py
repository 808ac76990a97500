"""Item 13: the normalizer computes in its documented dtype whatever the shape of its parameters.

A scalar normalizer (``from_range(0, 255)``, layout ``"N"``) used to hand torch
0-dim parameters, and type promotion ignores the dtype of a 0-dim tensor of the
same kind: bfloat16/float16 batches were normalized in bfloat16/float16,
float32 batches with float64 output in float32. Every combination of input
dtype, output dtype, parameter shape and evaluation path is held against a
float64 numpy oracle: the error allowed is one rounding to the output dtype
plus a few roundings in the compute dtype (float32, or float64 when the input
or the output is float64), far below a half-precision ulp.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import streamnorm as sn
from streamnorm import _affine

IN_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16,
             torch.float32, torch.float64]
FLOAT_OUT = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
INT_OUT = [torch.uint8, torch.int16, torch.int32]
PATHS = ["cpu", "autograd", "fused"]  # "fused": the accelerator path's arithmetic, on the CPU


def compute_dtype(in_dtype: torch.dtype, out_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in (in_dtype, out_dtype) else torch.float32


def spacing(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Distance between neighbouring ``dtype`` floats around ``values`` (normal range)."""
    info = torch.finfo(dtype)
    mag = np.maximum(np.abs(values), info.tiny)
    return info.eps * np.exp2(np.floor(np.log2(mag)))


@st.composite
def cases(draw):
    in_dtype = draw(st.sampled_from(IN_DTYPES))
    layout = draw(st.sampled_from(["N", "NF", "NCHW"]))
    nf = 1 if layout == "N" else draw(st.integers(1, 3))
    shape = {"N": (draw(st.integers(1, 40)),), "NF": (draw(st.integers(1, 12)), nf),
             "NCHW": (draw(st.integers(1, 3)), nf, draw(st.integers(1, 4)), 3)}[layout]
    if in_dtype.is_floating_point:
        values = st.floats(-300, 300, width=16 if in_dtype == torch.float16 else 32)
    else:
        info = torch.iinfo(in_dtype)
        values = st.integers(max(info.min, -5000), min(info.max, 5000))
    flat = draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    x = torch.tensor(flat, dtype=torch.float64).reshape(shape).to(in_dtype)
    # ranges / means whose float32 rounding is inexact, as in real statistics
    low = draw(st.lists(st.floats(-400, 100), min_size=nf, max_size=nf))
    width = draw(st.lists(st.floats(0.37, 900), min_size=nf, max_size=nf))
    kind = draw(st.sampled_from(["minmax", "symmetric", "zscore"]))
    if kind == "zscore":
        arg_a, arg_b = low, width  # mean, std
    else:
        arg_a, arg_b = low, [lo + w for lo, w in zip(low, width)]
    if layout == "N":
        arg_a, arg_b = arg_a[0], arg_b[0]
    return x, layout, kind, arg_a, arg_b


def build(layout: str, kind: str, arg_a, arg_b) -> sn.Normalizer:
    lay = None if layout == "N" else layout
    if kind == "zscore":
        return sn.Normalizer.from_mean_std(arg_a, arg_b, layout=lay)
    return sn.Normalizer.from_range(arg_a, arg_b, kind, layout=lay)


def oracle(norm: sn.Normalizer, x: torch.Tensor, inverse: bool) -> np.ndarray:
    """The documented map in float64 numpy, and the magnitude its terms reach."""
    scale = norm.scale64.numpy()
    shift = norm.shift64.numpy()
    if inverse:
        scale, shift = 1.0 / scale, -shift / scale
    axis = {"N": None, "NF": 1, "NCHW": 1}[norm.layout]
    xs = x.double().numpy()
    if axis is not None:
        shape = [1] * xs.ndim
        shape[axis] = -1
        scale, shift = scale.reshape(shape), shift.reshape(shape)
    magnitude = np.abs(xs * scale) + np.abs(shift) + 1.0
    if inverse and norm._map is not None:
        # the inverse is evaluated as (y - offset) / scale + center: its terms reach |center|
        center = np.abs(norm._map.center)
        magnitude = magnitude + (center.reshape(shape) if axis is not None else center)
    return xs * scale + shift, magnitude


def apply(norm, x, dtype, path, inverse, monkeypatch):
    if path == "fused":
        monkeypatch.setattr(_affine, "_fuses", lambda device: True)
    if path == "autograd":
        x = x.clone().requires_grad_(True)
    with torch.no_grad() if path != "autograd" else torch.enable_grad():
        y = norm.inverse(x, dtype=dtype) if inverse else norm(x, dtype=dtype)
    monkeypatch.undo()
    return y.detach()


@settings(max_examples=150, deadline=None)
@given(cases(), st.sampled_from(FLOAT_OUT), st.sampled_from(PATHS))
def test_forward_computes_in_documented_dtype(case, out_dtype, path):
    x, layout, kind, arg_a, arg_b = case
    if path == "autograd" and not x.dtype.is_floating_point:
        path = "cpu"
    norm = build(layout, kind, arg_a, arg_b)
    with pytest.MonkeyPatch.context() as mp:
        y = apply(norm, x, out_dtype, path, False, mp)
    assert y.dtype == out_dtype and y.shape == x.shape
    expected, magnitude = oracle(norm, x, inverse=False)
    eps = torch.finfo(compute_dtype(x.dtype, out_dtype)).eps
    err = np.abs(y.double().numpy() - expected)
    bound = 0.5 * spacing(expected, out_dtype) + 6 * eps * magnitude
    if kind != "zscore":
        # a range's ends rounded to the compute dtype: the scale keeps [low, high] inside
        # [0, 1], which moves values far outside the range by up to an ulp of the ends
        ends = np.abs(np.array(arg_a)) + np.abs(np.array(arg_b))
        width = np.abs(np.array(arg_b) - np.array(arg_a))
        if layout == "NCHW":
            ends, width = ends.reshape(-1, 1, 1), width.reshape(-1, 1, 1)
        bound = bound + 2 * eps * ends / width * (1 + np.abs(expected))
    assert np.all(err <= bound), (float((err - bound).max()), layout, kind, x.dtype, path)


@example(case=(torch.tensor([0], dtype=torch.uint8), "N", "symmetric", -33.0, 30.0),
         target=torch.float64, path="cpu")  # the inverse's terms cancel: 31.5 - 33
@settings(max_examples=150, deadline=None)
@given(cases(), st.sampled_from(FLOAT_OUT + INT_OUT), st.sampled_from(PATHS))
def test_inverse_computes_in_documented_dtype(case, target, path):
    y, layout, kind, arg_a, arg_b = case
    # normalized values are floats of a few units
    y = (y.double() / 256).to(y.dtype if y.dtype.is_floating_point else torch.float32)
    norm = build(layout, kind, arg_a, arg_b)
    with pytest.MonkeyPatch.context() as mp:
        x = apply(norm, y, target, path, True, mp)
    assert x.dtype == target and x.shape == y.shape
    expected, magnitude = oracle(norm, y, inverse=True)
    if target in FLOAT_OUT:
        eps = torch.finfo(compute_dtype(y.dtype, target)).eps
        bound = 0.5 * spacing(expected, target) + 6 * eps * magnitude
    else:
        info = torch.iinfo(target)
        expected = np.clip(expected, info.min, info.max)
        # rounded to nearest: off by one only where the value is a hair from .5
        compute = torch.float64 if y.dtype == torch.float64 or info.bits > 16 else torch.float32
        bound = 0.5 + 6 * torch.finfo(compute).eps * magnitude
    err = np.abs(x.double().numpy() - expected)
    assert np.all(err <= bound), (float((err - bound).max()), layout, kind, y.dtype, path)


def test_bfloat16_inverse_of_every_unit_value():
    """The measurement in the issue: every bfloat16 in [0, 1] back to uint8 units."""
    bits = torch.arange(0, 0x3F81, dtype=torch.int32).to(torch.int16)
    y = bits.view(torch.bfloat16)
    assert y.numel() == 16_257 and float(y.max()) == 1.0
    norm = sn.Normalizer.from_range(0, 255)
    exact = y.double() * 255  # 8 x 8 significant bits: exact in float32 too
    for path in PATHS:
        with pytest.MonkeyPatch.context() as mp:
            back = apply(norm, y, torch.float32, path, True, mp)
            as_uint8 = apply(norm, y, torch.uint8, path, True, mp)
        assert torch.equal(back.double(), exact), path
        assert torch.equal(as_uint8, exact.round().to(torch.uint8)), path


def test_float32_input_float64_output_is_float64():
    x = torch.tensor([1.0, 3.0, 254.0], dtype=torch.float32) + torch.tensor(
        [1e-7, 2e-7, 3e-5], dtype=torch.float32)
    norm = sn.Normalizer.from_range(0, 255)
    for path in PATHS:
        with pytest.MonkeyPatch.context() as mp:
            y = apply(norm, x, torch.float64, path, False, mp)
        np.testing.assert_allclose(y.numpy(), x.double().numpy() / 255, rtol=2e-16, atol=0)
