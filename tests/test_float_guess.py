"""float_cols' one pass about a guessed centre, and its fallback to two passes (issue 9).

Each block of rows is reduced once about the previous blocks' mean
(extrapolated one block ahead) and kept only when that centre lay near the
block's mean; otherwise it is reduced again by two passes. Both must be as
accurate as a two-pass reduction, held here against an exact rational oracle
on the data that defeat a guess: sorted columns, jumps between blocks, an
outlier first value, constants that change, and offset noise.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import streamnorm as sn
from test_stats_merge_accuracy import assert_one_pass_accurate, oracle

ROWS = 6000  # ~47 blocks of 128 rows at 64 float32 columns, ~24 at float64


def _columns(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    i = np.arange(rows, dtype=np.float64)
    block = (i // 100).astype(np.int64)
    return {
        "offset noise": 1e6 + rng.standard_normal(rows),
        "sorted": 1e9 + i * 0.25,
        "sorted descending, accelerating": -(i ** 2) * 1e-3,
        "jumps between blocks": np.where(block % 2 == 0, 0.0, 1e12) + rng.standard_normal(rows) * 1e-3,
        "outlier first value": np.concatenate([[1e15], rng.standard_normal(rows - 1)]),
        "constant that changes": np.where(block < 20, 3.0, -7.5),
        "constant": np.full(rows, 0.1),
        "tiny spread far away": -123456789.0 + rng.standard_normal(rows) * 1e-6,
    }


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", ["NF", "NCL"])
def test_guessed_centres_stay_as_accurate_as_two_passes(dtype, layout):
    rng = np.random.default_rng(0)
    cols = _columns(rng, ROWS)
    x = np.stack(list(cols.values()), axis=1).astype(dtype)
    if dtype == np.float32:
        x = x[:, [0, 2, 4, 5, 6]]  # float32 cannot hold the others' spread about their offset
    wide = np.repeat(x, 8, axis=1)  # 40-64 columns: the grouped column path, as in real tables
    batch = wide if layout == "NF" else wide.T[None]  # NCL: every column a contiguous plane
    got = sn.StatsAccumulator(layout).update(batch).result()
    assert_one_pass_accurate(got, wide.astype(np.float64), f"{layout} {np.dtype(dtype).name}")
    assert got.min.tolist() == wide.min(axis=0).astype(np.float64).tolist()
    assert got.max.tolist() == wide.max(axis=0).astype(np.float64).tolist()


@pytest.mark.parametrize("cuts", [[1], [127, 128, 129], [3000], list(range(97, 6000, 211))])
def test_batch_boundaries_do_not_change_the_accuracy(cuts):
    rng = np.random.default_rng(1)
    x = np.stack(list(_columns(rng, ROWS).values()), axis=1)
    acc = sn.StatsAccumulator("NF")
    for a, b in zip([0, *cuts], [*cuts, ROWS]):
        acc.update(x[a:b])
    assert_one_pass_accurate(acc.result(), x, f"cuts {cuts[:3]}")


@pytest.mark.parametrize("policy", ["omit", "propagate"])
def test_a_non_finite_value_after_kept_blocks_is_settled_as_before(policy):
    rng = np.random.default_rng(2)
    x = 5.0 + rng.standard_normal((4000, 64))
    x[2500, 3] = np.nan
    x[2600, 9] = np.inf
    got = sn.StatsAccumulator("NF", nan_policy=policy).update(x).result()
    if policy == "omit":
        assert got.nan_count[3] == 1 and got.nan_count[9] == 1 and got.count[3] == 3999
        for j in (3, 9):
            kept = np.delete(x[:, j], 2500 if j == 3 else 2600)
            assert abs(got.mean[j] - kept.mean()) <= 1e-14 * 6
            assert abs(got.m2[j] - kept.var() * len(kept)) <= 1e-12 * got.m2[j]
    else:
        assert np.isnan(got.mean[3]) and np.isnan(got.min[3]) and got.mean[9] == np.inf
    others = [j for j in range(64) if j not in (3, 9)]
    means, m2s = oracle(x[:, others])
    for f, j in enumerate(others):
        assert abs(float(Fraction(float(got.m2[j])) / m2s[f]) - 1) <= 5e-15
    with pytest.raises(sn.NonFiniteError, match="feature 3"):
        sn.StatsAccumulator("NF").update(x)
