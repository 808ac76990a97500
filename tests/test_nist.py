"""NIST StRD univariate datasets: the accuracy floors of DESIGN.md."""

import math

import numpy as np
import pytest

import streamnorm as sn
from conftest import load_nist

# minimum log relative error of (mean, std) through float64, batches of 7 rows
FLOORS = {
    "PiDigits": (14, 13), "Lottery": (14, 13), "Lew": (14, 13), "Mavro": (14, 12.5),
    "Michelso": (14, 13), "NumAcc1": (14, 13), "NumAcc2": (14, 13), "NumAcc3": (14, 9),
    "NumAcc4": (14, 8),
}
INTEGER_DATASETS = ["PiDigits", "Lottery", "Lew"]


def lre(value: float, certified: float) -> float:
    if value == certified:
        return 15.0
    return min(15.0, -math.log10(abs(value - certified) / abs(certified)))


@pytest.mark.parametrize("name", sorted(FLOORS))
@pytest.mark.parametrize("batch_rows", [7, 64, 100000])
@pytest.mark.parametrize("layout", ["NF", "N"])
def test_float64_path_reaches_the_floors(name, batch_rows, layout):
    data, mean, std = load_nist(name)
    x = data.reshape(-1, 1) if layout == "NF" else data
    acc = sn.StatsAccumulator(layout)
    for start in range(0, len(data), batch_rows):
        acc.update(x[start : start + batch_rows])
    stats = acc.result()
    mean_floor, std_floor = FLOORS[name]
    assert lre(stats.mean[0], mean) >= mean_floor
    assert lre(math.sqrt(stats.variance(ddof=1)[0]), std) >= std_floor


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_floors_hold_when_merging_shards_in_any_order(name):
    data, mean, std = load_nist(name)
    rng = np.random.default_rng(7)
    accs = [sn.StatsAccumulator("N").update(data[i : i + 7]) for i in range(0, len(data), 7)]
    order = rng.permutation(len(accs))
    total = accs[order[0]]
    for i in order[1:]:
        total.merge(accs[i])
    stats = total.result()
    assert lre(stats.mean[0], mean) >= FLOORS[name][0]
    assert lre(math.sqrt(stats.variance(ddof=1)[0]), std) >= FLOORS[name][1]


@pytest.mark.parametrize("name", INTEGER_DATASETS)
def test_integer_datasets_reach_14_through_the_integer_path(name):
    data, mean, std = load_nist(name)
    ints = data.astype(np.int32)
    assert np.array_equal(ints, data)
    acc = sn.StatsAccumulator("N")
    for start in range(0, len(ints), 7):
        acc.update(ints[start : start + 7])
    stats = acc.result()
    assert stats.is_exact
    assert lre(stats.mean[0], mean) >= 14
    assert lre(math.sqrt(stats.variance(ddof=1)[0]), std) >= 14
