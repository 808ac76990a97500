"""Item 2 of issue 8: integer batches of mixed dtypes give exact statistics or a clear refusal.

With ``histogram=True``, bool fits both uint8's and int8's 256 bins and is kept
exactly; int8 together with uint8 spans -128..255, which no 256 bins hold, so it
is refused in ``update``, ``merge`` and ``load_state_dict`` alike.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from conftest import exact_oracle, random_ints
from streamnorm.errors import DTypeError, IncompatibleStatsError

EIGHT_BIT = [np.bool_, np.uint8, np.int8]
ALL_INT = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32]


def _batches(draw_dtypes: list, seed: int, rows: int = 9, width: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [random_ints(rng, dt, (int(rng.integers(1, rows)), width)) for dt in draw_dtypes]


def _check_exact(stats: sn.Stats, batches: list[np.ndarray], histogram: bool) -> None:
    values = np.concatenate([b.astype(np.int64) for b in batches])
    oracle = exact_oracle(values, "NF")
    assert stats.count.tolist() == [len(values)] * values.shape[1]
    assert stats.mean.tolist() == oracle["mean"]
    assert stats.m2.tolist() == oracle["m2"]
    assert list(stats.int_sum) == oracle["sum"] and list(stats.int_sumsq) == oracle["sumsq"]
    assert stats.min.tolist() == values.min(axis=0).tolist()
    assert stats.max.tolist() == values.max(axis=0).tolist()
    assert stats.dtype == np.result_type(*[b.dtype for b in batches]).name
    if histogram:
        offset = stats.histogram_offset
        for f in range(values.shape[1]):
            expected = np.bincount(values[:, f] - offset, minlength=256)
            assert stats.histogram[f].tolist() == expected.tolist()
        qs = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]
        np.testing.assert_array_equal(stats.quantile(qs), np.quantile(values, qs, axis=0))


def _refusable(dtypes: list) -> bool:
    kinds = {np.dtype(dt).kind for dt in dtypes}
    return {"i", "u"} <= kinds


@settings(max_examples=80, deadline=None)
@given(dtypes=st.lists(st.sampled_from(EIGHT_BIT), min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_histogram_update_with_mixed_8bit_dtypes_is_exact_or_refused(dtypes, seed):
    batches = _batches(dtypes, seed)
    acc = sn.StatsAccumulator("NF", histogram=True)
    seen = []
    for batch in batches:
        if _refusable(seen + [batch.dtype]):
            before = acc.state_dict()
            with pytest.raises(DTypeError, match=rf"batch {acc.n_batches} has dtype {batch.dtype.name} but earlier "
                                                 rf"batches were .*cast every batch to one 8-bit dtype"):
                acc.update(batch)
            assert _same_state(acc.state_dict(), before)
            continue
        acc.update(batch)
        seen.append(batch.dtype)
    _check_exact(acc.result(), [b for b in batches if b.dtype in seen], histogram=True)


@settings(max_examples=80, deadline=None)
@given(dtypes=st.lists(st.sampled_from(EIGHT_BIT), min_size=2, max_size=5), seed=st.integers(0, 2**16))
def test_histogram_merge_and_state_of_mixed_8bit_dtypes_is_exact_or_refused(dtypes, seed):
    batches = _batches(dtypes, seed)
    parts = [sn.StatsAccumulator("NF", histogram=True).update(b) for b in batches]
    merged = sn.StatsAccumulator("NF", histogram=True)
    resumed = sn.StatsAccumulator("NF", histogram=True)
    kept = []
    for part, batch in zip(parts, batches):
        if _refusable([b.dtype for b in kept] + [batch.dtype]):
            with pytest.raises(IncompatibleStatsError, match="cannot merge histograms of"):
                merged.merge(part)
            continue
        merged.merge(part)
        # the same through a state dict: load the merged state, then merge on
        resumed_next = sn.StatsAccumulator("NF", histogram=True)
        resumed_next.load_state_dict(resumed.state_dict())
        resumed = resumed_next.merge(part)
        kept.append(batch)
    _check_exact(merged.result(), kept, histogram=True)
    assert resumed.result().equals(merged.result())


def test_histogram_state_of_a_wide_dtype_is_refused_on_load():
    state = sn.StatsAccumulator("NF", histogram=True).update(np.zeros((2, 1), np.uint8)).state_dict()
    for dtype in ("int16", "uint32", "float32"):
        with pytest.raises(sn.StreamnormError, match=f"malformed StatsAccumulator state.*{dtype}"):
            sn.StatsAccumulator("NF", histogram=True).load_state_dict({**state, "dtype": dtype})


def test_int8_then_uint8_names_the_batch_and_both_dtypes():
    acc = sn.StatsAccumulator("NF", histogram=True).update(np.array([[-5]], np.int8))
    with pytest.raises(DTypeError, match="batch 1 has dtype uint8 but earlier batches were int8"):
        acc.update(np.array([[200]], np.uint8))
    bool_then_int8 = sn.StatsAccumulator("N", histogram=True)
    bool_then_int8.update(np.array([True, False, True])).update(np.array([-3, 100], np.int8))
    s = bool_then_int8.result()
    assert s.dtype == "int8" and s.min.tolist() == [-3.0] and s.max.tolist() == [100.0]
    assert s.median.tolist() == [1.0]


@settings(max_examples=60, deadline=None)
@given(dtypes=st.lists(st.sampled_from(ALL_INT), min_size=1, max_size=6), seed=st.integers(0, 2**16),
       merge=st.booleans())
def test_any_mix_of_integer_dtypes_without_histogram_is_exact(dtypes, seed, merge):
    batches = _batches(dtypes, seed)
    if merge:
        acc = sn.StatsAccumulator("NF")
        for b in batches:
            acc.merge(sn.StatsAccumulator("NF").update(b))
    else:
        acc = sn.StatsAccumulator("NF")
        for b in batches:
            acc.update(b)
    _check_exact(acc.result(), batches, histogram=False)


def _same_state(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(np.array_equal(np.asarray(a[k], dtype=object), np.asarray(b[k], dtype=object)) for k in a)
