"""Item 10 of issue 8: failed and empty batches leave the state untouched; mismatches fail at merge."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from streamnorm.errors import IncompatibleStatsError

EMPTY_DTYPES = [np.float64, np.float32, np.uint8, np.int16, np.bool_, np.int64]


def _same_state(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not np.array_equal(np.asarray(x), np.asarray(y), equal_nan=np.asarray(x).dtype.kind == "f"):
                return False
        elif x != y:
            return False
    return True


@settings(max_examples=40, deadline=None)
@given(empty_dtype=st.sampled_from(EMPTY_DTYPES), then=st.sampled_from([np.uint8, np.int8, np.float32]),
       histogram=st.booleans(), position=st.integers(0, 2))
def test_empty_batches_fix_neither_dtype_nor_features(empty_dtype, then, histogram, position):
    histogram = histogram and np.dtype(then).itemsize == 1 and np.dtype(then).kind in "iu"
    data = (np.arange(12).reshape(4, 3) % 7).astype(then)
    batches = [data[:2], data[2:]]
    batches.insert(position, np.zeros((0, 3), empty_dtype))
    acc = sn.StatsAccumulator("NF", histogram=histogram)
    for b in batches:
        acc.update(b)
    expected = sn.compute_stats(data, layout="NF", histogram=histogram)
    assert acc.result().equals(expected) and acc.n_batches == 3
    only_empty = sn.StatsAccumulator("NF").update(np.zeros((0, 5), empty_dtype))
    assert only_empty.dtype is None and only_empty.n_features is None
    nothing = only_empty.result()  # no data: count 0 for the features the empty batches had
    assert nothing.count.tolist() == [0] * 5 and nothing.dtype == np.dtype(empty_dtype).name
    resumed = sn.StatsAccumulator("NF")
    resumed.load_state_dict(only_empty.state_dict())
    assert resumed.result().equals(nothing)
    only_empty.update(np.ones((1, 2), np.uint8))  # any width and dtype still welcome
    assert only_empty.n_features == 2


def _started(kind: str) -> sn.StatsAccumulator:
    names = ["a", "b", "c"]
    if kind == "fresh":
        return sn.StatsAccumulator("NF", feature_names=names)
    if kind == "empty":  # only empty batches so far
        return sn.StatsAccumulator("NF", feature_names=names).update(np.zeros((0, 3), np.float32))
    if kind == "float":
        return sn.StatsAccumulator("NF", feature_names=names).update(np.arange(6.0).reshape(2, 3))
    if kind == "int":
        return sn.StatsAccumulator("NF", feature_names=names).update(np.arange(6).reshape(2, 3).astype(np.int16))
    return sn.StatsAccumulator("NF", feature_names=names, histogram=True).update(
        np.arange(6, dtype=np.uint8).reshape(2, 3))


FAILURES = {
    "rank": np.zeros((2, 3, 1)),
    "features": np.zeros((2, 4)),
    "strings": np.array([["a", "b", "c"]]),
    "complex": np.zeros((2, 3), np.complex64),
    "not an array": {"x": 1},
    "non-finite": np.array([[1.0, 2.0, 3.0], [4.0, np.nan, 6.0]]),
    "int after float": np.ones((2, 3), np.uint8),
    "float after int": np.ones((2, 3), np.float32),
    "masked, kept NaN": np.ma.masked_array([[1.0, 2.0, 3.0], [np.nan, 5.0, 6.0]], mask=[[0, 1, 0], [0, 0, 0]]),
    "wide histogram": np.ones((2, 3), np.int32),
    "int8 after uint8 histogram": np.ones((2, 3), np.int8),
}


@pytest.mark.parametrize("kind", ["fresh", "empty", "float", "int", "hist"])
@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_failing_update_leaves_the_state_untouched(kind, failure):
    acc = _started(kind)
    before = acc.state_dict()
    try:
        acc.update(FAILURES[failure])
    except sn.StreamnormError:
        pass
    else:  # this batch is valid for this accumulator: nothing to check
        assert (kind, failure) in VALID
        return
    assert _same_state(acc.state_dict(), before), (kind, failure)
    # and the accumulator still takes what it took before
    good = np.arange(3, dtype=np.float64 if kind == "float" else np.uint8).reshape(1, 3)
    assert acc.update(good).result().count.sum() > 0


_FRESH_VALID = [("fresh", "int after float"), ("fresh", "float after int"), ("fresh", "wide histogram"),
                ("fresh", "int8 after uint8 histogram")]
VALID = {
    *_FRESH_VALID, ("int", "int after float"), ("float", "float after int"), ("int", "wide histogram"),
    ("int", "int8 after uint8 histogram"),
    ("hist", "int after float"),
    *[("empty", failure) for kind, failure in _FRESH_VALID],
}


def test_non_finite_first_batch_does_not_lock_the_accumulator_to_floats():
    acc = sn.StatsAccumulator("NF")
    with pytest.raises(sn.StreamnormError, match="non-finite"):
        acc.update(np.array([[np.nan, 1.0]]))
    acc.update(np.array([[3, 4]], np.uint8))
    assert acc.result().dtype == "uint8" and acc.result().is_exact and acc.n_batches == 1


def test_merging_a_different_feature_count_is_refused_at_merge_time():
    three = sn.StatsAccumulator("NF").update(np.zeros((2, 3), np.uint8))
    named = sn.StatsAccumulator("NF", feature_names=["x", "y"])
    with pytest.raises(IncompatibleStatsError, match="cannot merge 3 features into an accumulator of 2"):
        named.merge(three)
    assert named.n_features == 2 and named.dtype is None
    named.update(np.ones((1, 2), np.uint8))
    assert named.result().feature_names == ("x", "y")
    with pytest.raises(IncompatibleStatsError, match="3 features"):
        three.merge(sn.StatsAccumulator("NF", feature_names=["x", "y"]))


def test_load_state_dict_refuses_names_that_do_not_fit_the_features():
    state = sn.StatsAccumulator("NF").update(np.zeros((2, 3))).state_dict()
    acc = sn.StatsAccumulator("NF")
    with pytest.raises(sn.StreamnormError, match="2 feature names for 3 features"):
        acc.load_state_dict({**state, "feature_names": ["a", "b"]})
    assert acc.n_features is None


@pytest.mark.parametrize("edit", [
    {"count": [-1, 2]}, {"int_sumsq": [0, 0]}, {"int_sum": [100, 6]}, {"n_batches": -3},
    {"min": [5, 2], "max": [1, 4]},
])
def test_load_state_dict_refuses_states_no_data_could_give(edit):
    """Found by review: an edited state loaded and result() gave a negative count and m2."""
    a = sn.StatsAccumulator(layout="NF").update(np.array([[1, 2], [3, 4]], np.int16))
    state = {**a.state_dict(), **edit}
    b = sn.StatsAccumulator(layout="NF")
    with pytest.raises(sn.StreamnormError, match="inconsistent StatsAccumulator state"):
        b.load_state_dict(state)
    assert b.state_dict()["n_batches"] == 0  # unchanged


@pytest.mark.parametrize("edit", [{"m2": [-1.0, 0.5]}, {"mean": [np.nan, 0.0]}, {"min": [9.0, 2.0]}])
def test_load_state_dict_refuses_impossible_float_states(edit):
    a = sn.StatsAccumulator(layout="NF").update(np.array([[1.5, 2.0], [3.0, 4.5]]))
    state = {**a.state_dict(), **{k: np.asarray(v) for k, v in edit.items()}}
    with pytest.raises(sn.StreamnormError, match="inconsistent StatsAccumulator state"):
        sn.StatsAccumulator(layout="NF").load_state_dict(state)
