"""Every kind of bad statistics file gets a StatsFileError naming the file and the problem."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamnorm as sn
from _store_helpers import oracle_stats, seal
from streamnorm.errors import StatsFileError
from streamnorm.statsfile import FORMAT_VERSION, stats_to_bytes, stats_to_table


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    root = str(tmp_path / "store") if request.param == "local" else (
        f"memory://bad-files/{uuid.uuid4().hex}")
    return sn.StatsStore(root)


def good_stats():
    x = np.arange(5 * 3, dtype=np.uint8).reshape(5, 3)
    return oracle_stats(x, histogram=True, names=["r", "g", "b"])


def put_bytes(store, split, data):
    path = store._file(split)
    store.fs.makedirs(store.fs._parent(path), exist_ok=True)
    store.fs.pipe_file(path, bytes(data))


def put_table(store, split, table, reseal=True):
    """Write ``table`` as split ``split``; by default with a matching checksum, so the
    edit under test meets the check it is aimed at rather than the checksum."""
    if reseal:
        try:
            table = seal(table)
        except StatsFileError:
            pass  # not decodable: the load fails before the checksum anyway
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    put_bytes(store, split, sink.getvalue())


def expect_error(store, split, *patterns):
    with pytest.raises(StatsFileError) as info:
        store.load(split)
    message = str(info.value)
    assert store.url(split) in message, message
    for pattern in patterns:
        assert pattern in message, message
    # our message, not a chained pyarrow traceback
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None
    return message


def replace_column(table, name, array):
    return table.set_column(table.schema.get_field_index(name), name, array)


def with_metadata(table, **changes):
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    return table.replace_schema_metadata(meta)


def test_missing_split(store):
    store.save(good_stats(), "train")
    message = expect_error(store, "val", "no statistics for split 'val'", "'train'")
    assert "save it first" in message


def test_empty_file(store):
    put_bytes(store, "train", b"")
    expect_error(store, "train", "empty")


def test_truncated_file(store):
    data = bytes(stats_to_bytes(good_stats()))
    for cut in (len(data) // 2, len(data) - 1, 8, 3):
        put_bytes(store, "train", data[:cut])
        expect_error(store, "train", "not a readable Parquet file", "truncated or corrupt")


def test_random_bytes(store):
    rng = np.random.default_rng(0)
    put_bytes(store, "train", rng.bytes(5000))
    expect_error(store, "train", "not a readable Parquet file")
    # random bytes between valid magic numbers
    put_bytes(store, "train", b"PAR1" + rng.bytes(5000) + b"PAR1")
    expect_error(store, "train", "not a readable Parquet file")


def test_corrupted_middle_of_file(store):
    data = bytearray(stats_to_bytes(good_stats()))
    for i in range(60, len(data) // 2):
        data[i] ^= 0xFF
    put_bytes(store, "train", data)
    with pytest.raises(StatsFileError, match="split=train"):
        store.load("train")


def test_parquet_without_streamnorm_metadata(store):
    import pandas as pd

    sink = pa.BufferOutputStream()
    pd.DataFrame({"feature": ["a"], "mean": [1.0]}).to_parquet(sink)
    put_bytes(store, "train", sink.getvalue())
    expect_error(store, "train", "not a streamnorm statistics file")


def test_newer_format_is_refused_with_upgrade_hint(store):
    table = with_metadata(stats_to_table(good_stats()),
                          **{"streamnorm.format_version": str(FORMAT_VERSION + 1),
                             "streamnorm.version": "9.0"})
    put_table(store, "train", table)
    expect_error(store, "train", f"format {FORMAT_VERSION + 1}", "streamnorm 9.0",
                 "upgrade streamnorm")
    with pytest.raises(StatsFileError, match="upgrade streamnorm"):
        store.metadata("train")


@pytest.mark.parametrize("changes, pattern", [
    ({"streamnorm.format_version": "one"}, "bad streamnorm.format_version 'one'"),
    ({"streamnorm.format_version": "0"}, "bad streamnorm.format_version '0'"),
    ({"layout": None}, "'layout' metadata is missing"),
    ({"dtype": None}, "'dtype' metadata is missing"),
    ({"dtype": "object"}, "unknown source dtype 'object'"),
    ({"layout": "NCC"}, "bad layout metadata"),
])
def test_bad_metadata(store, changes, pattern):
    put_table(store, "train", with_metadata(stats_to_table(good_stats()), **changes))
    expect_error(store, "train", pattern)


def test_bad_source_json_only_matters_for_metadata(store):
    put_table(store, "train", with_metadata(stats_to_table(good_stats()), source="{oops"))
    assert store.load("train").equals(good_stats())
    with pytest.raises(StatsFileError, match="'source' metadata is not valid JSON"):
        store.metadata("train")


@pytest.mark.parametrize("column", ["feature", "feature_index", "count", "nan_count", "mean",
                                    "m2", "min", "max", "histogram", "int_sum", "int_sumsq"])
def test_missing_column(store, column):
    table = stats_to_table(good_stats())
    put_table(store, "train", table.drop_columns([column]))
    expect_error(store, "train", f"missing column(s) ['{column}']")


@pytest.mark.parametrize("column, new_type", [
    ("count", pa.float64()),
    ("nan_count", pa.int32()),
    ("feature_index", pa.int64()),
    ("mean", pa.float32()),
    ("max", pa.int64()),
    ("feature", pa.binary()),
    ("histogram", pa.list_(pa.int32())),
    ("int_sum", pa.int64()),
    ("int_sumsq", pa.decimal128(20, 0)),
])
def test_wrong_column_type(store, column, new_type):
    table = stats_to_table(good_stats())
    table = replace_column(table, column, table.column(column).cast(new_type))
    put_table(store, "train", table)
    shown = "list<int32>" if column == "histogram" else str(new_type)
    expect_error(store, "train", f"column '{column}' has type {shown}")


def test_histogram_of_wrong_length(store):
    stats = good_stats()
    table = stats_to_table(stats)
    hist = stats.histogram.tolist()
    hist[1] = hist[1][:255]
    put_table(store, "train", replace_column(table, "histogram",
                                             pa.array(hist, type=pa.list_(pa.int64()))))
    expect_error(store, "train", "histogram of row 1 has 255 entries, expected 256")
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(stats.histogram[:, :128].ravel()), 128)
    put_table(store, "train", replace_column(table, "histogram", fixed))
    expect_error(store, "train", "histogram lists have 128 entries")


def test_histogram_partially_null_or_with_null_counts(store):
    stats = good_stats()
    table = stats_to_table(stats)
    hist = stats.histogram.tolist()
    put_table(store, "train", replace_column(table, "histogram", pa.array(
        [hist[0], None, hist[2]], type=pa.list_(pa.int64()))))
    expect_error(store, "train", "'histogram' is null for some features only")
    hist[2][7] = None
    put_table(store, "train", replace_column(table, "histogram", pa.array(
        hist, type=pa.list_(pa.int64()))))
    expect_error(store, "train", "histogram holds null counts")


@pytest.mark.parametrize("column", ["count", "mean", "feature", "feature_index"])
def test_null_values(store, column):
    table = stats_to_table(good_stats())
    values = table.column(column).to_pylist()
    values[1] = None
    put_table(store, "train", replace_column(
        table, column, pa.array(values, type=table.schema.field(column).type)))
    expect_error(store, "train", f"column '{column}' has 1 null value(s)")


def test_exact_sums_partially_null(store):
    table = stats_to_table(good_stats())
    values = table.column("int_sum").to_pylist()
    values[0] = None
    put_table(store, "train", replace_column(table, "int_sum",
                                             pa.array(values, type=pa.decimal128(38, 0))))
    expect_error(store, "train", "'int_sum' is null for some features only")
    table = stats_to_table(good_stats())
    put_table(store, "train", replace_column(table, "int_sumsq",
                                             pa.nulls(3, type=pa.decimal128(38, 0))))
    expect_error(store, "train", "int_sum and int_sumsq must both be present or both null")


@pytest.mark.parametrize("column, values, pattern", [
    ("count", [5, -1, 5], "negative count for feature 'g'"),
    ("nan_count", [0, 0, -3], "negative nan_count for feature 'b'"),
    ("count", [5, 6, 5], "histogram does not sum to count for feature 'g'"),
    ("m2", [1.0, -0.5, 1.0], "negative m2"),
    ("min", [0.0, 100.0, 0.0], "min greater than max for feature 'g'"),
    ("feature_index", [0, 1, 1], "feature_index must number the 3 features 0..2"),
    ("feature_index", [1, 2, 3], "feature_index must number the 3 features 0..2"),
    ("feature_index", [0, -1, 2], "feature_index must number the 3 features 0..2"),
    ("feature", ["r", "g", "r"], "feature names must be unique"),
])
def test_inconsistent_values(store, column, values, pattern):
    table = stats_to_table(good_stats())
    table = replace_column(table, column, pa.array(values, type=table.schema.field(column).type))
    put_table(store, "train", table)
    expect_error(store, "train", pattern)


def test_negative_histogram_count(store):
    stats = good_stats()
    hist = stats.histogram.copy()
    hist[2, 255] += 1 + hist[2, 0]  # row sum unchanged
    hist[2, 0] = -1
    table = replace_column(stats_to_table(stats), "histogram",
                           pa.array(hist.tolist(), type=pa.list_(pa.int64())))
    put_table(store, "train", table)
    expect_error(store, "train", "negative histogram count for feature 'b'")


def test_exact_sum_beyond_38_digits_in_file(store):
    table = stats_to_table(good_stats())
    raw = b"".join(v.to_bytes(16, "little", signed=True) for v in (1, 10**38, 3))
    bad = pa.Array.from_buffers(pa.decimal128(38, 0), 3, [None, pa.py_buffer(raw)])
    put_table(store, "train", replace_column(table, "int_sum", bad))
    expect_error(store, "train", "column 'int_sum' holds a value beyond 38 digits")


def test_negative_int_sumsq(store):
    table = stats_to_table(good_stats())
    put_table(store, "train", replace_column(table, "int_sumsq", pa.array(
        [1, -2, 3], type=pa.int64()).cast(pa.decimal128(38, 0))))
    expect_error(store, "train", "negative int_sumsq for feature 'g'")


def test_no_rows(store):
    table = stats_to_table(good_stats()).slice(0, 0)
    put_table(store, "train", table)
    expect_error(store, "train", "holds no features")


def test_rows_in_any_order_and_extra_columns_are_fine(store):
    stats = good_stats()
    table = stats_to_table(stats).take([2, 0, 1]).append_column("note", pa.array(["x"] * 3))
    put_table(store, "train", table)
    assert store.load("train").equals(stats)


def test_large_types_written_by_other_tools_are_accepted(store):
    stats = good_stats()
    table = stats_to_table(stats)
    table = replace_column(table, "feature", table.column("feature").cast(pa.large_string()))
    table = replace_column(table, "histogram",
                           table.column("histogram").cast(pa.large_list(pa.int64())))
    put_table(store, "train", table)
    assert store.load("train").equals(stats)


def test_folder_where_the_file_should_be(tmp_path):
    store = sn.StatsStore(tmp_path)
    (tmp_path / "split=train" / "stats.parquet").mkdir(parents=True)
    with pytest.raises(StatsFileError, match="split=train/stats.parquet"):
        store.load("train")


def test_bad_file_in_load_many_and_merge(store):
    store.save(good_stats(), "a")
    put_bytes(store, "b", b"garbage")
    with pytest.raises(StatsFileError, match=r"split=b/stats\.parquet: not a readable Parquet"):
        store.merge(["a", "b"])
    with pytest.raises(StatsFileError, match="no statistics for split 'c'"):
        store.load_many(["a", "c"])


def test_nothing_is_unpickled_or_evaluated(store):
    # pandas metadata would be the only place a reader might be tempted to
    # reconstruct objects from; a file that carries some still loads as plain
    # values (and the attack surface of pyarrow's own metadata is not used).
    stats = good_stats()
    table = with_metadata(stats_to_table(stats),
                          pandas='{"index_columns": [], "columns": [], '
                                 '"pandas_version": "__import__(\'os\').system(\'false\')"}')
    put_table(store, "train", table)
    assert store.load("train").equals(stats)
