"""masked_count in the stats file (format 2): stored, checksummed, checked, merged; format 1 loads zeros."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamnorm as sn
from _store_helpers import seal
from streamnorm.errors import StatsFileError
from streamnorm.statsfile import META_CHECKSUM, stats_from_bytes, stats_to_bytes, stats_to_table

WHERE = "memory:///masked/split=train/stats.parquet"


def masked_stats(dtype: str = "int16", histogram: bool = False) -> sn.Stats:
    x = (np.arange(60).reshape(20, 3) % 13).astype(dtype)
    keep = (np.arange(60).reshape(20, 3) % 4) != 0
    return sn.StatsAccumulator("NF", histogram=histogram, feature_names=["a", "b", "c"]).update(
        x, mask=keep).result()


def to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue())


def with_masked(table: pa.Table, values) -> pa.Table:
    i = table.schema.get_field_index("masked_count")
    return table.set_column(i, "masked_count", pa.array(values, type=pa.int64()))


@pytest.mark.parametrize("dtype, histogram", [("int16", False), ("uint8", True), ("float32", False)])
def test_masked_count_round_trips_through_the_store(tmp_path, dtype, histogram):
    stats = masked_stats(dtype, histogram)
    assert stats.masked_count.tolist() == [5, 5, 5]
    store = sn.StatsStore(tmp_path)
    store.save(stats, "train")
    loaded = store.load("train")
    assert loaded.equals(stats) and loaded.masked_count.tolist() == [5, 5, 5]


def test_store_merges_add_masked_counts(tmp_path):
    store = sn.StatsStore(tmp_path)
    a, b = masked_stats(), sn.compute_stats([np.ones((4, 3), np.int16)], layout="NF", feature_names=["a", "b", "c"])
    store.save(a, "fold-0")
    store.save(b, "fold-1")
    merged = store.merge(["fold-0", "fold-1"])
    assert merged.masked_count.tolist() == [5, 5, 5] and merged.equals(a + b)


def test_the_file_has_an_int64_masked_count_column_that_duckdb_style_readers_see():
    table = stats_to_table(masked_stats())
    assert table.schema.field("masked_count").type == pa.int64()
    assert table.column("masked_count").to_pylist() == [5, 5, 5]


def test_an_edited_masked_count_fails_the_checksum():
    table = with_masked(stats_to_table(masked_stats()), [5, 6, 5])
    with pytest.raises(StatsFileError, match="checksum mismatch") as info:
        stats_from_bytes(to_bytes(table), where=WHERE)
    assert WHERE in str(info.value)


def test_a_negative_masked_count_is_refused_as_inconsistent():
    table = seal(with_masked(stats_to_table(masked_stats()), [5, -1, 5]))
    with pytest.raises(StatsFileError, match=r"negative masked_count for feature 'b'"):
        stats_from_bytes(to_bytes(table), where=WHERE)
    bad = sn.Stats(**{**{f: getattr(masked_stats(), f) for f in (
        "layout", "feature_names", "dtype", "count", "nan_count", "mean", "m2", "min", "max",
        "int_sum", "int_sumsq")}, "masked_count": [0, -2, 0]})
    with pytest.raises(sn.StreamnormError, match="negative masked_count"):
        stats_to_bytes(bad)


def test_format_2_files_without_masked_count_are_refused_clearly():
    table = stats_to_table(masked_stats())
    table = table.drop_columns(["masked_count"])
    with pytest.raises(StatsFileError, match=r"missing column\(s\) \['masked_count'\]"):
        stats_from_bytes(to_bytes(table), where=WHERE)


def test_format_1_files_load_with_zero_masked_count():
    table = stats_to_table(sn.compute_stats([np.ones((3, 2), np.int16)], layout="NF"))
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    meta["streamnorm.format_version"] = "1"
    meta.pop(META_CHECKSUM)
    old = table.drop_columns(["shift", "shifted_mean", "masked_count"]).replace_schema_metadata(meta)
    loaded = stats_from_bytes(to_bytes(old), where=WHERE)
    assert loaded.masked_count.tolist() == [0, 0] and loaded.count.tolist() == [3, 3]
