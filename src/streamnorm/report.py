"""Reading statistics back: summaries, drift between splits, plots.

Everything here takes :class:`~streamnorm.Stats` values, so it works on
statistics loaded from a :class:`~streamnorm.StatsStore` as well as on fresh
ones; the ``streamnorm show``/``diff``/``plot`` commands are thin wrappers.

Drift measures (per feature, ``base`` -> ``other``)
---------------------------------------------------
standardized mean difference (SMD)
    ``(mean_other - mean_base) / sqrt((var_base + var_other) / 2)``: how far
    the mean moved, in pooled standard deviations (0 when both are constant
    and equal, ``inf`` when only the constant value moved).
std ratio
    ``std_other / std_base``.
KS distance
    ``max |F_base(v) - F_other(v)|`` over the features' distributions
    (``histogram=True``): the two-sample Kolmogorov-Smirnov statistic of the
    data, exact for bool, 8- and 16-bit input; on the log grid of other
    dtypes it is taken at bucket edges (mass inside one bucket, a relative
    width of ``2 * quantile_error``, is not told apart). ``None`` without
    distributions, or for distributions on different grids.

A feature is *flagged* when ``|SMD| > threshold``, when the std ratio lies
outside ``[1 / (1 + threshold), 1 + threshold]`` or when the KS distance
exceeds ``threshold`` (default 0.1: a tenth of a standard deviation, 10% of
spread, 10% of probability mass).

Examples
--------
>>> import numpy as np, streamnorm as sn
>>> from streamnorm import report
>>> rng = np.random.default_rng(0)
>>> train = sn.compute_stats([rng.normal(0, 1, (1000, 2))], layout="NF")
>>> test = sn.compute_stats([rng.normal([0, 1], 1, (1000, 2))], layout="NF")
>>> [row["flagged"] for row in report.diff(train, test).rows]
[False, True]
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import IncompatibleStatsError, StreamnormError
from .stats import Stats

__all__ = [
    "DEFAULT_THRESHOLD",
    "QUANTILES",
    "Diff",
    "diff",
    "feature_groups",
    "figure",
    "format_table",
    "ks_distance",
    "plot",
    "summary_rows",
    "to_csv",
    "to_json",
]

DEFAULT_THRESHOLD = 0.1
QUANTILES = (("q25", 0.25), ("median", 0.5), ("q75", 0.75))
MAX_PLOTTED_FEATURES = 64
MAX_HISTOGRAM_PANELS = 8
PLOT_BINS = 256  # equal bins a float or 16-bit distribution is drawn on


def _num(value: Any) -> float | int | None:
    """A JSON-safe number: NaN becomes None, numpy scalars become Python ones."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return None if math.isnan(value) else value


def summary_rows(stats: Stats) -> list[dict[str, Any]]:
    """One dict per feature: feature, count, mean, std, min, max, nan_count
    (and q25, median, q75 when the statistics carry a distribution).

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> s = sn.compute_stats([np.array([[1.0, 2.0], [3.0, 6.0]])], layout="NF")
    >>> summary_rows(s)[1]
    {'feature': '1', 'count': 2, 'mean': 4.0, 'std': 2.0, 'min': 2.0, 'max': 6.0, 'nan_count': 0}
    """
    std = stats.std
    quantiles = {}
    if stats.has_distribution:
        qs = stats.quantile([q for _, q in QUANTILES])
        quantiles = {name: qs[i] for i, (name, _) in enumerate(QUANTILES)}
    rows = []
    for f, name in enumerate(stats.feature_names):
        row: dict[str, Any] = {
            "feature": name,
            "count": int(stats.count[f]),
            "mean": _num(stats.mean[f]),
            "std": _num(std[f]),
            "min": _num(stats.min[f]),
            "max": _num(stats.max[f]),
            "nan_count": int(stats.nan_count[f]),
        }
        for qname, values in quantiles.items():
            row[qname] = _num(values[f])
        rows.append(row)
    return rows


def ks_distance(base: Stats, other: Stats) -> np.ndarray | None:
    """Per-feature two-sample KS distance from the distributions (None without them).

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> a = sn.compute_stats([np.array([[0], [0], [1], [1]], np.uint8)], layout="NF", histogram=True)
    >>> b = sn.compute_stats([np.array([[1], [1], [1], [1]], np.uint8)], layout="NF", histogram=True)
    >>> ks_distance(a, b).tolist()
    [0.5]
    """
    if not (base.has_distribution and other.has_distribution) or base.n_features != other.n_features:
        return None
    a, b = base.sparse_distribution(), other.sparse_distribution()
    if a.kind != b.kind or a.bits != b.bits:
        return None
    return a.ks_distance(b)


@dataclass(frozen=True)
class Diff:
    """Per-feature drift of ``other`` against ``base``; see :func:`diff`.

    Attributes
    ----------
    base, other : str
        Names of the two splits (for display).
    threshold : float
    rows : list of dict
        feature, mean_base, mean_other, smd, std_base, std_other, std_ratio,
        ks (None without distributions), flagged, reasons.
    """

    base: str
    other: str
    threshold: float
    rows: list[dict[str, Any]]

    @property
    def flagged(self) -> list[str]:
        """Names of the features that moved beyond the threshold."""
        return [r["feature"] for r in self.rows if r["flagged"]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "other": self.other,
            "threshold": self.threshold,
            "flagged": self.flagged,
            "features": self.rows,
        }


def _smd(mean_a: float, var_a: float, mean_b: float, var_b: float) -> float:
    delta = mean_b - mean_a
    pooled = math.sqrt((var_a + var_b) / 2.0)
    if pooled > 0:
        return delta / pooled
    if delta == 0:
        return 0.0
    return math.copysign(math.inf, delta)


def _ratio(std_a: float, std_b: float) -> float:
    if std_a > 0:
        return std_b / std_a
    return 1.0 if std_b == 0 else math.inf


def diff(
    base: Stats,
    other: Stats,
    threshold: float = DEFAULT_THRESHOLD,
    names: tuple[str, str] = ("base", "other"),
) -> Diff:
    """How far each feature of ``other`` moved from ``base``.

    Parameters
    ----------
    base, other : Stats
        Statistics of the same features (e.g. the train and test splits).
    threshold : float
        Flag features with ``|SMD| > threshold``, a std ratio outside
        ``[1/(1+threshold), 1+threshold]`` or a KS distance above ``threshold``.
    names : (str, str)
        Display names of the two splits.

    Raises
    ------
    IncompatibleStatsError
        When the feature names differ.
    """
    if not (isinstance(threshold, (int, float)) and threshold > 0 and math.isfinite(threshold)):
        raise StreamnormError(f"threshold must be a positive number, got {threshold!r}")
    if base.feature_names != other.feature_names:
        raise IncompatibleStatsError(
            f"cannot compare {names[0]!r} and {names[1]!r}: their features differ "
            f"({list(base.feature_names)[:6]} vs {list(other.feature_names)[:6]})"
        )
    ks = ks_distance(base, other)
    var_a, var_b = base.var, other.var
    rows = []
    for f, name in enumerate(base.feature_names):
        smd = _smd(base.mean[f], var_a[f], other.mean[f], var_b[f])
        ratio = _ratio(math.sqrt(var_a[f]), math.sqrt(var_b[f]))
        k = None if ks is None else _num(ks[f])
        reasons = []
        if abs(smd) > threshold:
            reasons.append("mean")
        if not (1.0 / (1.0 + threshold) <= ratio <= 1.0 + threshold):
            reasons.append("std")
        if k is not None and k > threshold:
            reasons.append("distribution")
        if any(math.isnan(v) for v in (smd, ratio)):
            reasons.append("undefined")
        rows.append({
            "feature": name,
            "mean_base": _num(base.mean[f]),
            "mean_other": _num(other.mean[f]),
            "smd": _num(smd),
            "std_base": _num(math.sqrt(var_a[f])),
            "std_other": _num(math.sqrt(var_b[f])),
            "std_ratio": _num(ratio),
            "ks": k,
            "flagged": bool(reasons),
            "reasons": reasons,
        })
    return Diff(names[0], names[1], float(threshold), rows)


# ---------------------------------------------------------------------------
# text output
# ---------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        # The shortest text that reads back to the same float64: a table
        # that rounds hides the digits a reader compares (10000.002 is not 10000).
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Plain-text table: left-aligned text, right-aligned numbers.

    Examples
    --------
    >>> print(format_table([{"feature": "a", "mean": 1.5}, {"feature": "bb", "mean": 10.0}]))
    feature  mean
    a         1.5
    bb         10
    """
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(c), (int, float, np.integer, np.floating)) or row.get(c) is None
            for row in rows) and not isinstance(rows[0].get(c), bool)
        for c in columns
    ]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w)
                 for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(columns), *(line(r) for r in cells)])


def _json_value(value: Any) -> Any:
    """``value`` with every number made valid JSON (see :func:`to_json`)."""
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_value(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, np.integer):
        return int(value)
    return value


def to_json(value: Any) -> str:
    """Valid JSON for any reader (RFC 8259 has no NaN or Infinity).

    NaN becomes ``null``; +-infinity becomes the strings ``"inf"`` and
    ``"-inf"`` (which ``float()`` reads back). Finite floats are written
    as the shortest text that reads back to the same float64.

    Examples
    --------
    >>> print(to_json({"mean": [1.5, float("inf"), float("nan")]}))
    {
      "mean": [
        1.5,
        "inf",
        null
      ]
    }
    """
    return json.dumps(_json_value(value), indent=2, allow_nan=False)


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text; missing values are empty cells."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return buf.getvalue()


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------


def _matplotlib() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise StreamnormError(
            "plotting needs matplotlib, which is not installed; install the plot extra: "
            "pip install 'streamnorm[plot]'"
        ) from exc
    return Figure, FigureCanvasAgg


def feature_groups(stats_by_split: Mapping[str, Stats]) -> list[list[str]]:
    """Splits grouped by their features (layout and names), in order of first appearance.

    Splits in one group are plotted side by side in one panel; every group
    gets its own panel, so no split's features are dropped.

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> a = sn.compute_stats([np.ones((2, 2))], layout="NF")
    >>> b = sn.compute_stats([np.ones((2, 3))], layout="NF")
    >>> feature_groups({"train": a, "test": a, "extra": b})
    [['train', 'test'], ['extra']]
    """
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for split, stats in stats_by_split.items():
        groups.setdefault((stats.layout, tuple(stats.feature_names)), []).append(split)
    return list(groups.values())


def _stats_panel(ax: Any, stats_by_split: Mapping[str, Stats], splits: Sequence[str],
                 title: str) -> None:
    """Per-feature mean +- std and min/max of splits that share their features."""
    first = stats_by_split[splits[0]]
    n_feat = min(first.n_features, MAX_PLOTTED_FEATURES)
    names = list(first.feature_names[:n_feat])
    x = np.arange(n_feat, dtype=float)
    step = 0.8 / max(1, len(splits))
    # Features on very different scales (tables) are drawn in standard
    # deviations of the first split, so that each one stays readable.
    center, unit = first.mean[:n_feat].copy(), first.std[:n_feat].copy()
    spans = (first.max[:n_feat] - first.min[:n_feat])
    spans = spans[np.isfinite(spans) & (spans > 0)]
    standardize = spans.size > 1 and spans.max() / spans.min() > 50
    if standardize:
        unit = np.where(np.isfinite(unit) & (unit > 0), unit, 1.0)
        center = np.where(np.isfinite(center), center, 0.0)
    else:
        center, unit = np.zeros(n_feat), np.ones(n_feat)
    for i, split in enumerate(splits):
        stats = stats_by_split[split]
        xs = x - 0.4 + step * (i + 0.5)
        mean = (stats.mean[:n_feat] - center) / unit
        std = stats.std[:n_feat] / unit
        line = ax.errorbar(xs, mean, yerr=std, fmt="o", capsize=3, markersize=4,
                           label=f"{split}: mean ± std")
        color = line[0].get_color()
        ax.scatter(xs, (stats.min[:n_feat] - center) / unit, marker="v", s=14, color=color,
                   alpha=0.6)
        ax.scatter(xs, (stats.max[:n_feat] - center) / unit, marker="^", s=14, color=color,
                   alpha=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90 if n_feat > 12 else 0, fontsize=8)
    ax.set_xlabel("feature")
    if standardize:
        ax.set_ylabel(f"std units of {splits[0]} (▼ min, ▲ max)")
    else:
        ax.set_ylabel("value (▼ min, ▲ max)")
    shown = "" if first.n_features <= n_feat else f" (first {n_feat} of {first.n_features})"
    ax.set_title(title + shown)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)


def _plotted_distribution(stats: Stats, f: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, fraction of the data) for feature ``f``'s panel: 8-bit bins as they are, other
    distributions re-binned onto PLOT_BINS equal bins over their finite values."""
    if stats.histogram is not None:
        hist = stats.histogram[f].astype(float)
        total = hist.sum()
        return np.arange(hist.size) + stats.histogram_offset, hist / total if total else hist
    dist = stats.distribution
    values, (_, counts) = dist.values(f), dist.feature(f)
    finite = np.isfinite(values)
    values, counts = values[finite], counts[finite]
    if not counts.sum():
        return np.zeros(0), np.zeros(0)
    lo, hi = float(values.min()), float(values.max())
    if dist.kind == "exact" and hi - lo < PLOT_BINS:
        span = np.arange(lo, hi + 1)
        return span, np.bincount((values - lo).astype(np.int64), counts, span.size) / counts.sum()
    binned, edges = np.histogram(values, bins=PLOT_BINS, range=(lo, hi) if hi > lo else None, weights=counts)
    return (edges[:-1] + edges[1:]) / 2, binned / counts.sum()


def _histogram_panels(fig: Any, grid: Any, row: int, stats_by_split: Mapping[str, Stats],
                      splits: Sequence[str], n_hist: int) -> None:
    names = stats_by_split[splits[0]].feature_names
    for f in range(n_hist):
        hax = fig.add_subplot(grid[row, f])
        for split in splits:
            values, fraction = _plotted_distribution(stats_by_split[split], f)
            if values.size:
                hax.step(values, fraction, where="mid", label=split, linewidth=1)
        hax.set_title(f"{names[f]}", fontsize=9)
        hax.tick_params(labelsize=7)
        if f == 0:
            hax.set_ylabel("fraction")
            hax.legend(fontsize=7)


def figure(stats_by_split: Mapping[str, Stats], title: str | None = None) -> Any:
    """The matplotlib ``Figure`` that :func:`plot` renders (Agg canvas attached).

    One panel of per-feature statistics per group of splits with the same
    features (:func:`feature_groups`), each followed by histogram panels when
    some of its splits carry histograms.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    if not stats_by_split:
        raise StreamnormError("nothing to plot: no statistics given")
    groups = feature_groups(stats_by_split)
    panels = []  # (splits, splits with histograms, histogram panels)
    for splits in groups:
        hist_splits = [s for s in splits if stats_by_split[s].has_distribution]
        n_feat = min(stats_by_split[splits[0]].n_features, MAX_PLOTTED_FEATURES)
        panels.append((splits, hist_splits, min(n_feat, MAX_HISTOGRAM_PANELS) if hist_splits else 0))
    widest = max(min(stats_by_split[g[0]].n_features, MAX_PLOTTED_FEATURES) * max(1, len(g)) ** 0.5
                 for g in groups)
    width = max(6.0, min(24.0, 1.2 + 0.45 * widest))
    rows = sum(1 + (1 if n_hist else 0) for _, _, n_hist in panels)
    fig = Figure(figsize=(width, 3.8 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    columns = max([1] + [n_hist for _, _, n_hist in panels])
    grid = fig.add_gridspec(rows, columns)
    row = 0
    for splits, hist_splits, n_hist in panels:
        stats = stats_by_split[splits[0]]
        label = title or "per-feature statistics"
        if len(groups) > 1:
            label += (f": {', '.join(splits)} ({stats.layout}, "
                      f"{stats.n_features} feature{'s' if stats.n_features != 1 else ''})")
        _stats_panel(fig.add_subplot(grid[row, :]), stats_by_split, splits, label)
        row += 1
        if n_hist:
            _histogram_panels(fig, grid, row, stats_by_split, hist_splits, n_hist)
            row += 1
    return fig


def plot(
    stats_by_split: Mapping[str, Stats],
    out: str | None = None,
    title: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> bytes:
    """A PNG of per-feature mean +- std and min/max for each split, plus
    per-feature histograms where the statistics carry them.

    Splits with the same features share a panel; splits with other features
    (another layout, other columns) get panels of their own, so every
    feature of every split is drawn. Uses matplotlib's Agg canvas directly
    (no pyplot, no global backend change). In each panel, features beyond
    the first 64 are left out, and the panel's title says so.

    Parameters
    ----------
    stats_by_split : mapping of split name -> Stats
    out : str, optional
        File or fsspec URL to write the PNG to.
    title : str, optional
    storage_options : mapping, optional
        fsspec options for ``out``.

    Returns
    -------
    bytes
        The PNG.

    Raises
    ------
    StreamnormError
        When matplotlib (the ``plot`` extra) is missing or no statistics are given.

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> s = sn.compute_stats([np.random.default_rng(0).normal(size=(100, 3))], layout="NF")
    >>> plot({"train": s})[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    fig = figure(stats_by_split, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if out is not None:
        from .fsutil import resolve_url, write_bytes_atomic

        fs, path = resolve_url(out, storage_options)
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        try:
            if parent:
                fs.makedirs(parent, exist_ok=True)
            write_bytes_atomic(fs, path, data, overwrite=True)
        except OSError as exc:
            raise StreamnormError(f"cannot write the plot to {out}: {exc}") from exc
    return data
