"""report: drift measures against numpy/scipy oracles, tables, JSON, plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

import streamnorm as sn
from streamnorm import report


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), n_a=st.integers(2, 400), n_b=st.integers(2, 400),
       shift=st.integers(-40, 40))
def test_diff_matches_numpy_and_scipy(seed, n_a, n_b, shift):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 200, (n_a, 2)).astype(np.uint8)
    b = np.clip(rng.integers(0, 200, (n_b, 2)) + shift, 0, 255).astype(np.uint8)
    sa = sn.compute_stats([a], layout="NF", histogram=True)
    sb = sn.compute_stats([b], layout="NF", histogram=True)
    d = report.diff(sa, sb, threshold=0.1, names=("a", "b"))
    for f, row in enumerate(d.rows):
        x, y = a[:, f].astype(float), b[:, f].astype(float)
        pooled = math.sqrt((x.var() + y.var()) / 2)
        if pooled > 0:
            assert row["smd"] == pytest.approx((y.mean() - x.mean()) / pooled, rel=1e-9)
        if x.std() > 0:
            assert row["std_ratio"] == pytest.approx(y.std() / x.std(), rel=1e-9)
        assert row["ks"] == pytest.approx(scipy_stats.ks_2samp(x, y).statistic, abs=1e-12)
        expected = (abs(row["smd"]) > 0.1 or row["ks"] > 0.1
                    or not (1 / 1.1 <= row["std_ratio"] <= 1.1))
        assert row["flagged"] == expected


def test_diff_edge_cases():
    const = sn.compute_stats([np.full((5, 1), 3.0)], layout="NF")
    moved = sn.compute_stats([np.full((5, 1), 4.0)], layout="NF")
    same = report.diff(const, const)
    assert same.rows[0]["smd"] == 0.0 and same.rows[0]["std_ratio"] == 1.0
    assert not same.rows[0]["flagged"] and same.rows[0]["ks"] is None
    far = report.diff(const, moved)
    assert math.isinf(far.rows[0]["smd"]) and far.flagged == ["0"]
    other = sn.compute_stats([np.zeros((2, 2))], layout="NF")
    with pytest.raises(sn.StreamnormError, match="features differ"):
        report.diff(const, other)
    with pytest.raises(sn.StreamnormError, match="threshold"):
        report.diff(const, const, threshold=0)


def test_summary_rows_and_text_formats():
    x = np.random.default_rng(0).integers(0, 256, (100, 2)).astype(np.uint8)
    s = sn.compute_stats([x], layout="NF", histogram=True)
    rows = report.summary_rows(s)
    assert rows[1]["median"] == float(np.median(x[:, 1]))
    assert rows[0]["q25"] == float(np.quantile(x[:, 0], 0.25))
    text = report.format_table(rows)
    assert text.splitlines()[0].split() == ["feature", "count", "mean", "std", "min", "max",
                                            "nan_count", "q25", "median", "q75"]
    empty = sn.compute_stats([np.full((3, 1), np.nan)], layout="NF", nan_policy="omit")
    doc = json.loads(report.to_json(report.summary_rows(empty)))
    assert doc[0]["mean"] is None and doc[0]["nan_count"] == 3
    csv_text = report.to_csv(report.summary_rows(empty), ["feature", "mean", "nan_count"])
    assert csv_text.splitlines()[1] == "0,,3"


def test_plot_bytes_and_file(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    train = sn.compute_stats([rng.normal([0, 1e4], [1, 1e3], (200, 2))], layout="NF")
    test = sn.compute_stats([rng.normal([0.5, 1e4], [1, 1e3], (200, 2))], layout="NF")
    data = report.plot({"train": train, "test": test}, out=str(tmp_path / "a" / "p.png"))
    assert (tmp_path / "a" / "p.png").read_bytes() == data
    with Image.open(tmp_path / "a" / "p.png") as im:
        assert im.size[0] >= 500
    report.plot({"train": train}, out="memory://sn-report/p.png")
    import fsspec

    assert fsspec.filesystem("memory").cat("/sn-report/p.png")[:4] == b"\x89PNG"
    with pytest.raises(sn.StreamnormError, match="nothing to plot"):
        report.plot({})
