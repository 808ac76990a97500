"""StatsAccumulator.update_columns: a batch as one 1-D array per feature, never stacked.

Its statistics must be those of ``update`` on the stacked batch
(``np.column_stack`` for "NF", ``np.stack`` for "FN"): counts, min, max and
integer statistics exactly, float mean/m2 to a few ulps ("FN": bit for bit,
which the Parquet reader relies on for shard results that do not change).
"""

import numpy as np
import pytest

import streamnorm as sn
from streamnorm.errors import DTypeError, LayoutError, NonFiniteError

# Float moments of one batch summed in another order: the mean within this many
# float64 epsilons of max(|mean|, std) (its rounding scales with the spread, not with
# a mean near 0), m2 within this many epsilons of itself.
FLOAT_EPS = 8
EPS = np.finfo(np.float64).eps


def _stacked(columns, layout):
    return np.column_stack(columns) if layout == "NF" else np.stack(columns)


def _float_columns(seed, n=5000, k=4, dtype=np.float32):
    rng = np.random.default_rng(seed)
    offsets = rng.uniform(-1e4, 1e4, k)
    return [(rng.standard_normal(n) * rng.uniform(0.1, 100) + offsets[j]).astype(dtype)
            for j in range(k)]


def assert_same(a: sn.Stats, b: sn.Stats, exact: bool) -> None:
    """``a`` equals ``b``: counts and extremes exactly, moments exactly or to a few ulps."""
    np.testing.assert_array_equal(a.count, b.count)
    np.testing.assert_array_equal(a.nan_count, b.nan_count)
    np.testing.assert_array_equal(a.masked_count, b.masked_count)
    np.testing.assert_array_equal(a.min, b.min)
    np.testing.assert_array_equal(a.max, b.max)
    assert a.dtype == b.dtype and a.feature_names == b.feature_names
    assert a.int_sum == b.int_sum and a.int_sumsq == b.int_sumsq
    if exact:
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.m2, b.m2)
        return
    assert_close_moments(a, b)


def assert_close_moments(a: sn.Stats, b: sn.Stats) -> None:
    finite = np.isfinite(b.mean)
    np.testing.assert_array_equal(np.isfinite(a.mean), finite)
    np.testing.assert_array_equal(np.isnan(a.m2), np.isnan(b.m2))
    scale = np.maximum(np.abs(b.mean), b.std)[finite]
    assert (np.abs(a.mean[finite] - b.mean[finite]) <= FLOAT_EPS * EPS * scale).all(), (a.mean, b.mean)
    assert (np.abs(a.m2[finite] - b.m2[finite]) <= FLOAT_EPS * EPS * b.m2[finite]).all(), (a.m2, b.m2)


@pytest.mark.parametrize("layout", ["NF", "FN"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_float_columns_equal_the_stacked_batch(layout, dtype):
    batches = [_float_columns(seed, dtype=dtype) for seed in range(3)]
    acc = sn.StatsAccumulator(layout)
    ref = sn.StatsAccumulator(layout)
    for columns in batches:
        acc.update_columns(columns)
        ref.update(_stacked(columns, layout))
    assert acc.n_batches == ref.n_batches == 3
    assert_same(acc.result(), ref.result(), exact=layout == "FN")


@pytest.mark.parametrize("layout", ["NF", "FN"])
@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32,
                                   np.uint32, np.int64])
def test_integer_columns_equal_the_stacked_batch_exactly(layout, dtype):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if dtype is not np.bool_ else np.iinfo(np.uint8)
    lo, hi = (0, 2) if dtype is np.bool_ else (max(info.min, -(2**40)), min(info.max, 2**40))
    acc = sn.StatsAccumulator(layout)
    ref = sn.StatsAccumulator(layout)
    for _ in range(3):
        columns = [rng.integers(lo, hi, 3000, endpoint=dtype is not np.bool_).astype(dtype)
                   for _ in range(3)]
        acc.update_columns(columns)
        ref.update(_stacked(columns, layout))
    assert_same(acc.result(), ref.result(), exact=dtype is not np.int64 or layout == "FN")


def test_mixed_dtypes_are_promoted_as_column_stack():
    a = np.arange(10, dtype=np.int16)
    b = np.linspace(0, 1, 10, dtype=np.float32)
    acc = sn.StatsAccumulator("NF").update_columns([a, b])
    ref = sn.StatsAccumulator("NF").update(np.column_stack([a, b]))
    assert acc.dtype == np.float32
    assert_same(acc.result(), ref.result(), exact=False)
    ints = sn.StatsAccumulator("NF").update_columns([a, a.astype(np.uint8)])
    assert ints.dtype == np.int16
    assert_same(ints.result(), sn.StatsAccumulator("NF").update(np.column_stack([a, a])).result(),
                exact=True)


@pytest.mark.parametrize("policy", ["omit", "propagate"])
@pytest.mark.parametrize("layout", ["NF", "FN"])
def test_non_finite_values_follow_the_nan_policy(policy, layout):
    columns = _float_columns(2, n=3000, k=4)
    columns[0][[5, 700, 2999]] = np.nan
    columns[1][10] = np.inf
    columns[2][:] = np.nan  # a feature with no finite value
    acc = sn.StatsAccumulator(layout, nan_policy=policy).update_columns(columns)
    ref = sn.StatsAccumulator(layout, nan_policy=policy).update(_stacked(columns, layout))
    a, b = acc.result(), ref.result()
    assert_same(a, b, exact=layout == "FN")
    assert a.nan_count.tolist() == [3, 1, 3000, 0]
    assert np.isnan(a.mean[2]) and (policy == "omit") != np.isnan(a.mean[0])


def test_non_finite_value_raises_naming_the_feature_and_leaves_the_state():
    good = _float_columns(3, n=1000, k=3)
    bad = [c.copy() for c in good]
    bad[1][500] = np.nan
    acc = sn.StatsAccumulator("NF", feature_names=["a", "b", "c"])
    with pytest.raises(NonFiniteError, match=r"batch 0: feature 'b' \(index 1\)"):
        acc.update_columns(bad)
    assert acc.n_batches == 0 and acc.dtype is None
    acc.update_columns(good)
    with pytest.raises(NonFiniteError, match=r"batch 1: feature 'b' \(index 1\)"):
        acc.update_columns(bad)
    assert_same(acc.result(), sn.StatsAccumulator("NF", feature_names=["a", "b", "c"])
                .update(np.column_stack(good)).result(), exact=False)


@pytest.mark.parametrize("kind", ["float", "int"])
def test_ignore_value_and_masked_columns(kind):
    rng = np.random.default_rng(4)
    if kind == "float":
        columns = [rng.standard_normal(2000).astype(np.float32) for _ in range(3)]
        columns[0][::7] = -9999.0
    else:
        columns = [rng.integers(-50, 50, 2000).astype(np.int16) for _ in range(3)]
        columns[0][::7] = -9999
    acc = sn.StatsAccumulator("NF", ignore_value=-9999).update_columns(columns)
    ref = sn.StatsAccumulator("NF", ignore_value=-9999).update(np.column_stack(columns))
    assert_same(acc.result(), ref.result(), exact=True)
    assert acc.result().masked_count.tolist() == [286, 0, 0]
    masked = [np.ma.masked_equal(c, -9999) for c in columns]
    acc = sn.StatsAccumulator("NF").update_columns(masked)
    ref = sn.StatsAccumulator("NF").update(np.ma.column_stack(masked))
    assert_same(acc.result(), ref.result(), exact=True)
    assert acc.result().masked_count.tolist() == [286, 0, 0]


def test_histogram_columns_equal_the_stacked_batch():
    rng = np.random.default_rng(5)
    columns = [rng.integers(0, 256, 1000).astype(np.uint8) for _ in range(2)]
    acc = sn.StatsAccumulator("NF", histogram=True).update_columns(columns).result()
    ref = sn.StatsAccumulator("NF", histogram=True).update(np.column_stack(columns)).result()
    np.testing.assert_array_equal(acc.histogram, ref.histogram)
    assert_same(acc, ref, exact=True)


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_merge_of_two_halves_equals_one_pass(dtype):
    columns = [c.astype(dtype) if dtype is np.int32 else c
               for c in _float_columns(6, n=6000, k=3)]
    one = sn.StatsAccumulator("NF").update_columns(columns)
    first = sn.StatsAccumulator("NF").update_columns([c[:2500] for c in columns])
    second = sn.StatsAccumulator("NF").update_columns([c[2500:] for c in columns])
    assert_same(first.merge(second).result(), one.result(), exact=dtype is np.int32)


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_threads_give_the_same_bits(dtype):
    rng = np.random.default_rng(7)
    columns = [(rng.standard_normal(200_000) * 1000).astype(dtype) for _ in range(4)]
    one = sn.StatsAccumulator("FN").update_columns(columns).result()
    many = sn.StatsAccumulator("FN", threads=3).update_columns(columns).result()
    assert_same(one, many, exact=True)


def test_empty_columns_count_a_batch_and_fix_nothing():
    acc = sn.StatsAccumulator("NF").update_columns([np.zeros(0, np.float32)] * 2)
    assert acc.n_batches == 1 and acc.dtype is None
    assert acc.result().count.tolist() == [0, 0]
    acc.update_columns([np.ones(3, np.int8)] * 2)
    assert acc.result().count.tolist() == [3, 3]


def test_torch_columns():
    import torch
    columns = [torch.arange(5, dtype=torch.bfloat16), torch.ones(5, dtype=torch.bfloat16)]
    acc = sn.StatsAccumulator("NF").update_columns(columns)
    assert acc.dtype_name == "bfloat16"
    assert acc.result().mean.tolist() == [2.0, 1.0]


@pytest.mark.parametrize("columns,error,match", [
    ([np.zeros(3), np.zeros(4)], LayoutError, r"batch 0: column 1 has 4 rows but column 0 has 3"),
    ([np.zeros(3), np.zeros((3, 1))], LayoutError, r"column 1 has shape \(3, 1\); .* 1-D"),
    ([np.zeros(3)] * 3, LayoutError, r"has 3 features .* expects 2 feature names"),
    ([], LayoutError, "no columns"),
    (np.zeros((3, 2)), sn.StreamnormError, "list or tuple of 1-D arrays.*got a ndarray"),
    ([np.array(["a", "b"]), np.array(["c", "d"])], DTypeError, "batch 0 has dtype <U1"),
    ([np.zeros(2), np.array(["a", "b"])], DTypeError, "do not mix|batch 0 has dtype"),
    ([np.zeros(2), "ab"], DTypeError, "batch 0 is a str"),
])
def test_arguments_are_checked_eagerly(columns, error, match):
    acc = sn.StatsAccumulator("NF", feature_names=["a", "b"])
    with pytest.raises(error, match=match):
        acc.update_columns(columns)
    assert acc.n_batches == 0 and acc.dtype is None


def test_layout_must_be_two_axes_with_features():
    with pytest.raises(LayoutError, match=r"two-axis layout .* 'NCHW'"):
        sn.StatsAccumulator("NCHW").update_columns([np.zeros(3)] * 3)
    with pytest.raises(LayoutError, match="two-axis layout"):
        sn.StatsAccumulator("NL").update_columns([np.zeros(3)])


def test_int_after_float_batches_is_refused_as_by_update():
    acc = sn.StatsAccumulator("NF").update_columns([np.zeros(3, np.float32)] * 2)
    with pytest.raises(DTypeError, match="batch 1 has dtype int16 but earlier batches were float32"):
        acc.update_columns([np.zeros(3, np.int16)] * 2)
    assert acc.n_batches == 1


def test_parquet_reader_does_not_stack_columns(tmp_path, monkeypatch):
    """The table reducer hands Arrow's column buffers over as they are."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from streamnorm import engine

    rng = np.random.default_rng(8)
    table = pa.table({f"c{j}": rng.standard_normal(10_000).astype(np.float32) for j in range(5)})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=4000)
    seen = []
    real = sn.StatsAccumulator.update_columns

    def spy(self, columns):
        seen.extend(c.base is not None or not c.flags.owndata for c in columns)
        return real(self, columns)

    def refuse(self, batch, mask=None):
        raise AssertionError("a stacked batch was passed to update()")

    monkeypatch.setattr(sn.StatsAccumulator, "update_columns", spy)
    monkeypatch.setattr(sn.StatsAccumulator, "update", refuse)
    stats = engine.compute([str(tmp_path)], workers=1).stats
    assert seen and all(seen)  # views of Arrow buffers, not copies
    stacked = table.to_pandas().to_numpy()
    monkeypatch.undo()
    ref = sn.StatsAccumulator("NF", feature_names=table.column_names).update(stacked).result()
    np.testing.assert_array_equal(stats.count, ref.count)
    assert_close_moments(stats, ref)
