"""Reports on distributions of every dtype: KS distances, summaries, plots, the --histogram flag."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

import streamnorm as sn
from streamnorm import report
from streamnorm.cli import main


def test_ks_distance_16bit_is_exact(rng):
    a = rng.integers(0, 3000, (500, 2)).astype(np.uint16)
    b = rng.integers(500, 4000, (400, 2)).astype(np.uint16)
    sa = sn.compute_stats(a, layout="NF", histogram=True)
    sb = sn.compute_stats(b, layout="NF", histogram=True)
    want = [sps.ks_2samp(a[:, f], b[:, f]).statistic for f in range(2)]
    np.testing.assert_allclose(report.ks_distance(sa, sb), want, rtol=0, atol=1e-12)


def test_ks_distance_floats_on_the_grid(rng):
    a = rng.normal(0, 1, (3000, 2))
    b = rng.normal(0.5, 1, (2000, 2))
    error = 1e-4
    sa = sn.compute_stats(a, layout="NF", histogram=True, quantile_error=error)
    sb = sn.compute_stats(b, layout="NF", histogram=True, quantile_error=error)
    want = np.array([sps.ks_2samp(a[:, f], b[:, f]).statistic for f in range(2)])
    got = report.ks_distance(sa, sb)
    # bucket edges hide at most the mass of one bucket per side: a few values of 5000 here
    assert np.all(np.abs(got - want) <= 0.01)
    d = report.diff(sa, sb)
    assert [r["ks"] for r in d.rows] == got.tolist()


def test_ks_distance_8bit_against_16bit_is_exact(rng):
    a = rng.integers(0, 256, (300, 1)).astype(np.uint8)
    b = rng.integers(0, 300, (300, 1)).astype(np.uint16)
    got = report.ks_distance(sn.compute_stats(a, layout="NF", histogram=True),
                             sn.compute_stats(b, layout="NF", histogram=True))
    assert got[0] == pytest.approx(sps.ks_2samp(a[:, 0], b[:, 0]).statistic, abs=1e-12)


def test_ks_distance_is_none_across_grids(rng):
    x = rng.normal(size=(10, 1))
    a = sn.compute_stats(x, layout="NF", histogram=True, quantile_error=1e-2)
    b = sn.compute_stats(x, layout="NF", histogram=True, quantile_error=1e-5)
    assert report.ks_distance(a, b) is None


def test_summary_rows_carry_quantiles_for_float_distributions(rng):
    s = sn.compute_stats(rng.normal(size=(100, 2)), layout="NF", histogram=True)
    row = report.summary_rows(s)[0]
    assert row["median"] == pytest.approx(float(s.median[0]))


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_plot_draws_float_and_16bit_distributions(tmp_path, rng, dtype):
    x = (np.abs(rng.normal(size=(500, 2))) * 1000).astype(dtype)
    stats = {"train": sn.compute_stats(x, layout="NF", histogram=True),
             "test": sn.compute_stats(x[:200], layout="NF", histogram=True)}
    fig = report.figure(stats)
    panels = [ax for ax in fig.axes if ax.get_ylabel() == "fraction" or ax.get_title() in ("0", "1")]
    assert len(panels) == 2
    line = panels[0].get_lines()[0]
    assert np.isclose(line.get_ydata().sum(), 1.0)
    out = tmp_path / "p.png"
    report.plot(stats, str(out))
    assert out.stat().st_size > 0


def test_cli_histogram_on_float_parquet_gives_quantiles(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.linspace(-5, 5, 101)
    pq.write_table(pa.table({"a": x, "b": x.astype(np.float32) * 2}), tmp_path / "t.parquet")
    root = tmp_path / "stats"
    assert main(["compute", str(tmp_path / "t.parquet"), "--store", str(root), "--split", "train",
                 "--histogram", "--no-progress"]) == 0
    s = sn.StatsStore(root).load("train")
    assert s.quantile_error == 1e-3 and s.median.tolist() == [0.0, 0.0]
    capsys.readouterr()
    assert main(["show", str(root), "--format", "csv"]) == 0
    assert "median" in capsys.readouterr().out.splitlines()[0]
