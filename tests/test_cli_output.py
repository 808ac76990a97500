"""``streamnorm show``/``diff`` output: valid JSON for non-finite values, CSV, full
precision, and ``diff --fail-on-drift`` (issue 8, items 17, 21 and 22)."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from offline_helpers import run_cli
from streamnorm import report


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity (which Python accepts, other readers not)."""
    def refuse(constant):
        raise AssertionError(f"invalid JSON constant {constant} in output")

    return json.loads(text, parse_constant=refuse)


def save(root, split, array, **kwargs):
    stats = sn.compute_stats([np.asarray(array, dtype=float)], layout="NF", **kwargs)
    sn.StatsStore(root).save(stats, split)
    return stats


@pytest.fixture
def nonfinite_store(tmp_path):
    root = tmp_path / "store"
    save(root, "train", [[1.0, 2.0], [3.0, 4.0]])
    save(root, "posinf", [[1.0, 2.0], [np.inf, 4.0]], nan_policy="propagate")
    save(root, "neginf", [[1.0, -np.inf], [3.0, 4.0]], nan_policy="propagate")
    save(root, "nan", [[np.nan, 2.0], [3.0, 4.0]], nan_policy="propagate")
    return root


def test_show_json_with_nonfinite_splits_is_valid_json(nonfinite_store):
    # item 17
    res = run_cli("show", str(nonfinite_store), "--format", "json")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    doc = strict_json(res.stdout)
    assert set(doc) == {"train", "posinf", "neginf", "nan"}
    assert doc["posinf"]["features"][0]["max"] == "inf"
    assert doc["neginf"]["features"][1]["min"] == "-inf"
    assert doc["train"]["features"][1]["mean"] == 3.0
    store = sn.StatsStore(nonfinite_store)
    for split, entry in doc.items():
        stats = store.load(split)
        for f, row in enumerate(entry["features"]):
            for key in ("mean", "std", "min", "max"):
                want = float(getattr(stats, key)[f])
                assert row[key] == (None if math.isnan(want) else
                                    ("inf" if want > 0 else "-inf") if math.isinf(want) else want)
    for split in ("posinf", "neginf", "nan"):  # one split never breaks another
        res = run_cli("show", str(nonfinite_store), "--split", split, "--format", "json")
        assert res.returncode == 0, res.stderr
        strict_json(res.stdout)


def test_diff_json_with_infinite_smd_is_valid_json(tmp_path):
    # item 17: two constant splits whose value moved give SMD = +-inf
    root = tmp_path / "store"
    save(root, "a", [[1.0, 5.0], [1.0, 5.0]])
    save(root, "b", [[2.0, 4.0], [2.0, 4.0]])
    res = run_cli("diff", str(root), "a", "b", "--format", "json")
    assert res.returncode == 0, res.stderr
    doc = strict_json(res.stdout)
    assert [f["smd"] for f in doc["features"]] == ["inf", "-inf"]
    assert doc["flagged"] == ["0", "1"]


def test_diff_json_nonfinite_split(nonfinite_store):
    res = run_cli("diff", str(nonfinite_store), "train", "posinf", "--format", "json")
    assert res.returncode == 0, res.stderr
    strict_json(res.stdout)


_floats = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(_floats, max_size=8), scalar=_floats)
def test_to_json_any_float_is_valid_json_and_reads_back(values, scalar):
    # item 17: every float64, including NaN and +-inf, numpy scalars and arrays
    doc = strict_json(report.to_json({"a": values, "b": np.float64(scalar),
                                      "c": np.asarray(values, dtype=np.float64)}))

    def back(v):
        return math.nan if v is None else float(v)

    for got, want in [*zip(doc["a"], values), *zip(doc["c"], values), (doc["b"], scalar)]:
        if math.isnan(want):
            assert got is None
        else:
            assert back(got) == want


# -- show: full precision (item 21) ------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_table_cells_read_back_to_the_same_float(value):
    # item 21: show rounded to 6 significant figures (10000.002 printed as 10000)
    table = report.format_table([{"feature": "x", "mean": value}])
    cell = table.splitlines()[1].split()[-1]
    assert float(cell) == value


def test_show_table_prints_every_digit(tmp_path):
    root = tmp_path / "store"
    save(root, "train", [[10000.002], [10000.002]])
    res = run_cli("show", str(root))
    assert res.returncode == 0, res.stderr
    row = res.stdout.splitlines()[2].split()
    assert row[2] == "10000.002" and row[4] == "10000.002"


# -- diff: CSV and --fail-on-drift (item 22) ---------------------------------------


@pytest.fixture
def drift_store(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "store"
    save(root, "train", rng.normal(0, 1, (400, 3)))
    save(root, "same", rng.normal(0, 1, (400, 3)) * [1, 1, 1])
    save(root, "moved", rng.normal([0, 2, 0], [1, 1, 3], (400, 3)))
    return root


def test_diff_csv_matches_the_json_report(drift_store):
    res = run_cli("diff", str(drift_store), "train", "moved", "--format", "csv")
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    doc = strict_json(run_cli("diff", str(drift_store), "train", "moved",
                              "--format", "json").stdout)
    assert [r["feature"] for r in rows] == ["0", "1", "2"]
    for row, want in zip(rows, doc["features"]):
        for key in ("mean_base", "mean_other", "smd", "std_base", "std_other", "std_ratio"):
            assert float(row[key]) == want[key]
        assert row["flagged"] == str(want["flagged"])
        assert row["reasons"] == ";".join(want["reasons"])
    assert [r["reasons"] for r in rows] == ["", "mean", "std"]


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_diff_fail_on_drift_exit_status(drift_store, fmt):
    root = str(drift_store)
    moved = run_cli("diff", root, "train", "moved", "--format", fmt, "--fail-on-drift")
    assert moved.returncode == 3, moved.stderr  # EXIT_DRIFT
    assert moved.stdout and "Traceback" not in moved.stderr
    same = run_cli("diff", root, "train", "same", "--format", fmt, "--fail-on-drift")
    assert same.returncode == 0, same.stdout
    # opt-in: without the flag drift is reported, not an error
    assert run_cli("diff", root, "train", "moved", "--format", fmt).returncode == 0


def test_diff_help_documents_the_drift_exit_status():
    res = run_cli("diff", "--help")
    text = " ".join(res.stdout.split())
    assert "--fail-on-drift" in text and "exit with status 3" in text
    assert "--format {table,json,csv}" in text
