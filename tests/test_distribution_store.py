"""Distributions in the stats file: round trips, checksum, consistency, other readers, exact merges."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from streamnorm.errors import StatsFileError
from streamnorm.statsfile import stats_from_bytes, stats_to_bytes, stats_to_table

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DTYPES = [np.uint16, np.int16, np.float16, np.float32, np.float64, np.int32, np.uint32, np.int64]


def _data(dtype, seed: int, n: int = 60) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * 3000
    if np.dtype(dtype).kind == "u":
        x = np.abs(x)
    return x.astype(dtype)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(DTYPES), st.integers(0, 2**32 - 1), st.sampled_from([1e-1, 1e-3, 1e-7]))
def test_distribution_round_trips_bit_for_bit(dtype, seed, error):
    s = sn.compute_stats(_data(dtype, seed), layout="NF", histogram=True, quantile_error=error)
    back = stats_from_bytes(stats_to_bytes(s, split="x"))
    assert back.equals(s) and back.distribution.equals(s.distribution)
    assert np.array_equal(back.quantile([0, 0.3, 1]), s.quantile([0, 0.3, 1]))
    assert back.quantile_error == s.quantile_error


def test_infinities_and_omitted_nans_round_trip():
    x = np.array([[1.0], [np.inf], [-np.inf], [2.0]])
    s = sn.compute_stats(x, layout="NF", histogram=True, nan_policy="propagate")
    assert stats_from_bytes(stats_to_bytes(s)).equals(s)
    y = np.array([[1.0], [np.nan], [np.inf], [2.0]])
    s = sn.compute_stats(y, layout="NF", histogram=True, nan_policy="omit")
    assert stats_from_bytes(stats_to_bytes(s)).equals(s)


def _rewrite(table: pa.Table, column: str, values: list) -> bytes:
    i = table.schema.get_field_index(column)
    table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_checksum_covers_the_distribution():
    s = sn.compute_stats(_data(np.float32, 1), layout="NF", histogram=True)
    table = stats_to_table(s)
    counts = table.column("distribution_counts").to_pylist()
    counts[0][0] += 1
    with pytest.raises(StatsFileError, match="checksum"):
        stats_from_bytes(_rewrite(table, "distribution_counts", counts))


def test_checksum_covers_the_quantile_error_metadata():
    s = sn.compute_stats(_data(np.float32, 1), layout="NF", histogram=True)
    table = stats_to_table(s)
    meta = dict(table.schema.metadata)
    meta[b"streamnorm.quantile_error"] = b"0.002"
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(meta), sink)
    with pytest.raises(StatsFileError, match="checksum"):
        stats_from_bytes(sink.getvalue())


@pytest.mark.parametrize("dtype", [np.uint16, np.float64])
def test_counts_that_do_not_sum_to_count_are_refused(dtype):
    s = sn.compute_stats(_data(dtype, 2), layout="NF", histogram=True)
    d = s.distribution
    counts = d.counts.copy()
    counts[0] += 1
    bad = sn.Stats(layout=s.layout, feature_names=s.feature_names, dtype=s.dtype, count=s.count,
                   nan_count=s.nan_count, mean=s.mean, m2=s.m2, min=s.min, max=s.max,
                   int_sum=s.int_sum, int_sumsq=s.int_sumsq, shift=s.shift, shifted_mean=s.shifted_mean,
                   distribution=type(d)(d.kind, d.error, d.offsets, d.keys, counts))
    with pytest.raises(sn.StreamnormError, match="does not sum to count"):
        stats_to_bytes(bad)


def test_exact_counts_that_disagree_with_min_are_refused():
    s = sn.compute_stats(_data(np.uint16, 3), layout="NF", histogram=True)
    d = s.distribution
    keys = d.keys.copy()
    keys[0] -= 1 if keys[0] > 0 else -1
    bad = sn.Stats(layout=s.layout, feature_names=s.feature_names, dtype=s.dtype, count=s.count,
                   nan_count=s.nan_count, mean=s.mean, m2=s.m2, min=s.min, max=s.max,
                   int_sum=s.int_sum, int_sumsq=s.int_sumsq,
                   distribution=type(d)(d.kind, d.error, d.offsets, keys, d.counts))
    with pytest.raises(sn.StreamnormError, match="disagrees"):
        stats_to_bytes(bad)


def test_duckdb_and_polars_read_distributions(tmp_path):
    store = sn.StatsStore(tmp_path)
    store.save(sn.compute_stats(_data(np.float32, 4), layout="NF", histogram=True), "f")
    store.save(sn.compute_stats(_data(np.uint16, 4), layout="NF", histogram=True), "u")
    rows = duckdb.sql(
        f"select split, sum(list_sum(distribution_counts)) as n from read_parquet("
        f"'{tmp_path}/split=*/stats.parquet', hive_partitioning=true) group by split order by split"
    ).fetchall()
    assert rows == [("f", 180), ("u", 180)]
    frame = pl.read_parquet(tmp_path / "split=u" / "stats.parquet")
    assert frame["distribution_keys"].list.len().sum() == store.load("u").distribution.keys.size


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_stored_merges_and_cross_validation_are_exact(tmp_path, dtype):
    store = sn.StatsStore(tmp_path)
    folds = [sn.compute_stats(_data(dtype, 10 + i), layout="NF", histogram=True) for i in range(3)]
    for i, s in enumerate(folds):
        store.save(s, f"fold-{i}")
    merged = store.merge(["fold-2", "fold-0", "fold-1"])
    whole = sn.compute_stats(np.concatenate([_data(dtype, 10 + i) for i in range(3)]), layout="NF", histogram=True)
    assert merged.distribution.equals(whole.distribution)
    cv = store.cross_validation(["fold-0", "fold-1", "fold-2"])
    train0 = cv["fold-0"] if isinstance(cv["fold-0"], sn.Stats) else cv["fold-0"][0]
    assert train0.distribution.equals((folds[1] + folds[2]).distribution)
