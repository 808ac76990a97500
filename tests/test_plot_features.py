"""``streamnorm plot`` draws every feature of every split (issue 8, item 18)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from offline_helpers import run_cli
from streamnorm import report

LAYOUTS = {"NF": lambda n, f: (n, f), "NCHW": lambda n, f: (n, f, 2, 2), "N": lambda n, f: (n,)}


def make_stats(layout: str, n_features: int, seed: int, prefix: str, hist: bool) -> sn.Stats:
    rng = np.random.default_rng(seed)
    shape = LAYOUTS[layout](5, n_features)
    data = rng.integers(0, 256, shape).astype(np.uint8)
    names = None if layout == "N" else [f"{prefix}{i}" for i in range(shape[1])]
    return sn.compute_stats([data], layout=layout, feature_names=names, histogram=hist)


def plotted(fig) -> dict[str, tuple[list[str], int]]:
    """split -> (tick labels of its panel, number of features drawn for it)."""
    out: dict[str, tuple[list[str], int]] = {}
    for ax in fig.axes:
        for container in ax.containers:
            split = container.get_label().split(":")[0]
            assert split not in out, f"split {split} drawn in two panels"
            ticks = [t.get_text() for t in ax.get_xticklabels()]
            out[split] = (ticks, len(container.lines[0].get_xdata()))
    return out


split_specs = st.lists(
    st.tuples(st.sampled_from(sorted(LAYOUTS)), st.integers(1, 5), st.sampled_from("ab"),
              st.booleans()),
    min_size=1, max_size=5,
)


@settings(max_examples=25, deadline=None)
@given(specs=split_specs)
def test_every_feature_of_every_split_is_plotted(specs):
    stats = {f"s{k}": make_stats(layout, n, k, prefix, hist)
             for k, (layout, n, prefix, hist) in enumerate(specs)}
    fig = report.figure(stats)
    drawn = plotted(fig)
    assert set(drawn) == set(stats)
    for split, s in stats.items():
        ticks, n = drawn[split]
        assert n == s.n_features
        assert ticks == list(s.feature_names)
    assert len(report.feature_groups(stats)) == len({(s.layout, s.feature_names)
                                                      for s in stats.values()})


def test_features_beyond_the_cap_are_named_in_the_title():
    wide = sn.compute_stats([np.zeros((2, report.MAX_PLOTTED_FEATURES + 6))], layout="NF")
    fig = report.figure({"train": wide, "small": make_stats("NF", 2, 0, "c", False)})
    titles = [ax.get_title() for ax in fig.axes]
    assert any(f"(first {report.MAX_PLOTTED_FEATURES} of {wide.n_features})" in t for t in titles)
    assert plotted(fig)["small"][1] == 2


def test_cli_plot_of_a_store_mixing_layouts(tmp_path):
    root = tmp_path / "store"
    store = sn.StatsStore(root)
    store.save(make_stats("NF", 4, 1, "col", False), "tabular")
    store.save(make_stats("NCHW", 3, 2, "ch", True), "images")
    store.save(make_stats("NF", 2, 3, "col", False), "fewer")
    out = tmp_path / "p.png"
    res = run_cli("plot", str(root), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "splits: " in res.stdout
