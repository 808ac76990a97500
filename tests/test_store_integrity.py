"""Item 4: a stats file loads exactly as written or not at all.

Format 2 files carry a SHA-256 content checksum and Parquet page checksums; every
file (format 1 included) must hold consistent values. Failures are
``StatsFileError`` naming the file and the failed check, never another exception
and never different values.
"""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamnorm as sn
from _store_helpers import multiset_stats, oracle_stats, seal
from streamnorm.errors import StatsFileError
from streamnorm.statsfile import (
    META_CHECKSUM,
    content_checksum,
    stats_from_bytes,
    stats_to_bytes,
    stats_to_table,
)

WHERE = "memory:///integrity/split=train/stats.parquet"


def float_stats() -> sn.Stats:
    """Offset floats (a real shift), an omitted NaN and a non-ASCII name."""
    x = np.array([[1e9 + 0.5, -3.25], [1e9 + 0.75, 2.0], [1e9, np.nan]])
    return sn.compute_stats([x[:1], x[1:]], layout="NF", feature_names=["a", "é"],
                            nan_policy="omit")


def hist_stats() -> sn.Stats:
    """uint8 with histogram and exact sums."""
    x = np.array([[1, 200], [3, 7], [3, 255]], np.uint8)
    return sn.compute_stats([x], layout="NF", histogram=True, feature_names=["r", "g"])


def to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue())


def replace_column(table, name, values):
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, pa.array(values, type=table.schema.field(name).type))


def as_format_1(table: pa.Table) -> pa.Table:
    """The same statistics as a format-1 writer stored them: no shift, no checksum."""
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    meta["streamnorm.format_version"] = "1"
    meta.pop(META_CHECKSUM)
    return table.drop_columns(["shift", "shifted_mean"]).replace_schema_metadata(meta)


def load_error(data: bytes) -> str:
    with pytest.raises(StatsFileError) as info:
        stats_from_bytes(data, where=WHERE)
    assert WHERE in str(info.value)
    return str(info.value)


# -- bit flips -------------------------------------------------------------------
@pytest.mark.parametrize("make", [float_stats, hist_stats])
def test_single_bit_flips_load_identical_stats_or_raise_stats_file_error(make):
    stats = make()
    data = bytes(stats_to_bytes(stats, split="train", source={"paths": ["a.parquet"]},
                                created_at="2026-01-01T00:00:00.000000Z"))
    # a deterministic sample of ~1/5 of every bit position, spread over the whole file
    rng = np.random.default_rng(len(data))
    bits = rng.choice(len(data) * 8, size=min(len(data) * 8, 6000), replace=False)
    outcomes = {"same": 0, "refused": 0}
    for bit in sorted(bits.tolist()):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            got = stats_from_bytes(bytes(flipped), where=WHERE)
        except StatsFileError as exc:
            assert WHERE in str(exc)
            outcomes["refused"] += 1
            continue
        assert got.equals(stats), f"bit {bit} (byte {bit // 8}) loaded different statistics"
        outcomes["same"] += 1
    assert outcomes["refused"] > len(bits) // 3, outcomes


def test_pages_carry_crc_checksums_that_are_verified():
    data = bytearray(stats_to_bytes(float_stats()))
    chunk = pq.ParquetFile(pa.BufferReader(bytes(data))).metadata.row_group(0).column(4)
    assert chunk.path_in_schema == "mean"
    data[chunk.data_page_offset + chunk.total_compressed_size - 1] ^= 1
    with pytest.raises(OSError, match="CRC checksum verification failed"):
        pq.ParquetFile(pa.BufferReader(bytes(data)), page_checksum_verification=True).read()
    assert "CRC" in load_error(bytes(data))


# -- the content checksum --------------------------------------------------------
EDITS = {
    "feature": lambda s: ["b", *s.feature_names[1:]],
    "count": lambda s: [int(s.count[0]) + 1, *s.count[1:].tolist()],
    "nan_count": lambda s: [int(s.nan_count[0]) + 1, *s.nan_count[1:].tolist()],
    "mean": lambda s: [float(np.nextafter(s.mean[0], np.inf)), *s.mean[1:].tolist()],
    "m2": lambda s: [float(np.nextafter(s.m2[0], np.inf)), *s.m2[1:].tolist()],
    "min": lambda s: [float(np.nextafter(s.min[0], -np.inf)), *s.min[1:].tolist()],
    "max": lambda s: [float(np.nextafter(s.max[0], np.inf)), *s.max[1:].tolist()],
    "shift": lambda s: [float(np.nextafter(s.shift[0], np.inf)), *s.shift[1:].tolist()],
    "shifted_mean": lambda s: [float(np.nextafter(s.shifted_mean[0], np.inf)),
                               *s.shifted_mean[1:].tolist()],
}


@pytest.mark.parametrize("column", sorted(EDITS))
def test_any_edited_value_fails_the_checksum(column):
    stats = float_stats()
    table = replace_column(stats_to_table(stats), column, EDITS[column](stats))
    assert "checksum mismatch" in load_error(to_bytes(table))


@pytest.mark.parametrize("column", ["histogram", "int_sum", "int_sumsq"])
def test_edited_histogram_or_exact_sums_fail_the_checksum(column):
    stats = hist_stats()
    table = stats_to_table(stats)
    if column == "histogram":
        hist = stats.histogram.copy()
        hist[0, 1], hist[0, 2] = hist[0, 2], hist[0, 1]
        values = hist.tolist()
    else:
        values = list(getattr(stats, column))
        values[1] += 1
    assert "checksum mismatch" in load_error(to_bytes(replace_column(table, column, values)))


@pytest.mark.parametrize("key, value", [
    ("split", "val"), ("created_at", "2020-01-01T00:00:00Z"), ("source", '{"x": 1}'),
    ("layout", "NC"), ("dtype", "float32"), ("streamnorm.version", "0.0.1"),
])
def test_edited_metadata_fails_the_checksum(key, value):
    table = stats_to_table(float_stats(), split="train", source={"x": 0})
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    meta[key] = value
    assert "checksum mismatch" in load_error(to_bytes(table.replace_schema_metadata(meta)))


def wide_exact_stats() -> sn.Stats:
    """int64 data whose exact sums need more than 64 bits (and a negative one)."""
    return multiset_stats("int64", [[(2**60, 5), (-3, 1)], [(-(2**61), 9)], [(7, 2)]],
                          names=["wide", "négatif", "small"])


@pytest.mark.parametrize("make", [hist_stats, float_stats, wide_exact_stats])
def test_checksum_follows_its_documented_definition(make):
    # an independent reader, written from the statsfile module docstring, value by value
    import hashlib
    import json
    import struct

    table = stats_to_table(make(), split="train", source={"paths": ["x"]})
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    keys = ["streamnorm.format_version", "streamnorm.version", "layout", "dtype", "split",
            "created_at", "source"]
    h = hashlib.sha256(b"streamnorm-stats\n")
    h.update(json.dumps({k: meta[k] for k in keys if k in meta}, sort_keys=True,
                        separators=(",", ":"), ensure_ascii=True).encode() + b"\n")
    names = [n.encode() for n in table.column("feature").to_pylist()]
    ends = [0]
    for name in names:
        ends.append(ends[-1] + len(name))
    h.update(struct.pack("<q", len(names)) + struct.pack(f"<{len(ends)}q", *ends)
             + b"".join(names))
    for column, fmt in [("count", "<i8"), ("nan_count", "<i8"), ("masked_count", "<i8"),
                        ("mean", "<f8"), ("m2", "<f8"),
                        ("min", "<f8"), ("max", "<f8"), ("shift", "<f8"),
                        ("shifted_mean", "<f8")]:
        h.update(np.array(table.column(column).to_pylist(), dtype=fmt).tobytes())
    hist = table.column("histogram").to_pylist()
    h.update(b"\x00" if hist[0] is None else
             b"\x01" + np.array(hist, dtype="<i8").tobytes())
    for column in ("int_sum", "int_sumsq"):
        values = table.column(column).to_pylist()
        h.update(b"\x00" if values[0] is None else b"\x01" + b"".join(
            int(v).to_bytes(16, "little", signed=True) for v in values))
    assert meta[META_CHECKSUM] == "sha256:" + h.hexdigest()


def test_missing_checksum_in_format_2_is_refused():
    table = stats_to_table(float_stats())
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    del meta[META_CHECKSUM]
    message = load_error(to_bytes(table.replace_schema_metadata(meta)))
    assert "'streamnorm.checksum' metadata is missing" in message


def test_checksum_ignores_encoding_row_order_and_foreign_metadata():
    stats = float_stats()
    table = stats_to_table(stats).take([1, 0])
    table = table.replace_schema_metadata({**table.schema.metadata, b"pandas": b"{}"})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="gzip", use_dictionary=True)
    assert stats_from_bytes(sink.getvalue()).equals(stats)
    assert content_checksum(table) == table.schema.metadata[b"streamnorm.checksum"].decode()


def test_invalid_utf8_in_a_feature_name_is_a_stats_file_error():
    table = stats_to_table(hist_stats())
    raw = pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(
        np.array([0, 1, 2], np.int32).tobytes()), pa.py_buffer(b"r\xff")])
    table = table.set_column(0, "feature", raw)
    for candidate in (seal(table), as_format_1(table)):
        assert "feature name is not valid UTF-8" in load_error(to_bytes(candidate))


# -- consistency, for format 2 (sealed) and format 1 files -------------------------
def _int16_stats():
    return multiset_stats("int16", [[(-5, 2), (300, 1)], [(7, 3)]], names=["a", "b"])


def _float32_stats():
    x = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)
    return sn.compute_stats([x], layout="NF", feature_names=["a", "b"])


INCONSISTENT = [
    # (make stats, column, edit(values), expected words)
    (_float32_stats, "m2", lambda v: [np.nan, v[1]], "m2 NaN although nan_count is 0"),
    (_float32_stats, "m2", lambda v: [np.inf, v[1]], "m2 larger than"),
    (_float32_stats, "m2", lambda v: [-1.0, v[1]], "negative m2"),
    (_float32_stats, "m2", lambda v: [v[0] * 1.5, v[1]], "m2 larger than"),
    (_float32_stats, "mean", lambda v: [10.0, v[1]], "mean outside [min, max]"),
    (_float32_stats, "count", lambda v: [0, v[1]], "count 0 but a mean that is not NaN"),
    (_float32_stats, "max", lambda v: [1e39, v[1]], "not a value of float32"),
    (_float32_stats, "mean", lambda v: [np.inf, v[1]], "not finite although nan_count is 0"),
    (_int16_stats, "max", lambda v: [40000.0, v[1]], "not a value of int16"),
    (_int16_stats, "min", lambda v: [-5.5, v[1]], "not a value of int16"),
    (_int16_stats, "int_sum", lambda v: [v[0] + 1, v[1]], "disagrees with the exact sums"),
    (_int16_stats, "int_sumsq", lambda v: [v[0] + 3, v[1]], "disagrees with the exact sums"),
    (hist_stats, "histogram", lambda v: [v[0][:1] + [v[0][2], v[0][1]] + v[0][3:], v[1]],
     "histogram disagrees"),
    (hist_stats, "min", lambda v: [0.0, v[1]], "histogram disagrees with min or max"),
]


@pytest.mark.parametrize("make, column, edit, words", INCONSISTENT)
@pytest.mark.parametrize("version", [1, 2])
def test_inconsistent_values_are_refused_naming_the_check(make, column, edit, words, version):
    stats = make()
    table = stats_to_table(stats)
    table = replace_column(table, column, edit(table.column(column).to_pylist()))
    table = seal(table) if version == 2 else as_format_1(table)
    message = load_error(to_bytes(table))
    assert "inconsistent statistics" in message and words in message, message
    assert f"feature {stats.feature_names[0]!r}" in message, message


def test_shift_that_contradicts_the_mean_is_refused():
    table = stats_to_table(float_stats())
    shifted = table.column("shifted_mean").to_pylist()
    table = seal(replace_column(table, "shifted_mean", [shifted[0] + 1.0, shifted[1]]))
    assert "mean is not shift + shifted_mean for feature 'a'" in load_error(to_bytes(table))


def test_format_1_files_load_with_the_mean_as_shift():
    stats = float_stats()
    loaded = stats_from_bytes(to_bytes(as_format_1(stats_to_table(stats))))
    assert loaded.mean.tobytes() == stats.mean.tobytes()
    assert loaded.shift.tobytes() == stats.mean.tobytes()
    assert not loaded.shifted_mean.any()


# -- what the accumulator legitimately produces always round-trips --------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 30),
    policy=st.sampled_from(["propagate", "omit"]),
    special=st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), max_size=4),
    dtype=st.sampled_from(["float16", "float32", "float64"]),
    offset=st.sampled_from([0.0, 1e4, 1e9]),
)
def test_propagated_and_omitted_non_finite_values_round_trip(seed, rows, policy, special, dtype,
                                                               offset):
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):  # float16 holds no 1e9: inf, a non-finite value too
        x = (offset + rng.standard_normal((rows, 3))).astype(dtype)
    for value in special:
        x[rng.integers(rows), rng.integers(3)] = value
    cut = int(rng.integers(0, rows + 1))
    parts = [sn.compute_stats([p], layout="NF", nan_policy=policy) for p in (x[:cut], x[cut:])
             if len(p)]
    store = sn.StatsStore(f"memory://integrity/{uuid.uuid4().hex}")
    for k, part in enumerate(parts):
        store.save(part, f"part-{k}")
        assert store.load(f"part-{k}").equals(part)
    merged = sn.Stats.merge_all(parts)
    store.save(merged, "merged")
    assert store.load("merged").equals(merged)
    assert store.merge([f"part-{k}" for k in range(len(parts))]).equals(merged)


def test_exact_integer_and_histogram_stats_round_trip():
    x = np.arange(40, dtype=np.uint8).reshape(20, 2)
    for stats in (oracle_stats(x, histogram=True), oracle_stats(x.astype(np.int16)),
                  sn.compute_stats([x[:7], x[7:]], layout="NF", histogram=True)):
        assert stats_from_bytes(stats_to_bytes(stats)).equals(stats)


def test_tiny_and_longdouble_statistics_save_and_load(tmp_path):
    """Found by review: subnormal rounding exceeded the relative slack; float128 was refused on load."""
    store = sn.StatsStore(str(tmp_path))
    tiny = sn.compute_stats([np.array([2.050952103378703e-162, -6.396684674548604e-162])], layout="N")
    store.save(tiny, "tiny")
    assert store.load("tiny").equals(tiny)
    wide = sn.compute_stats([np.array([[1.5], [2.5]], dtype=np.longdouble)], layout="NF")
    store.save(wide, "ld")
    assert store.load("ld").equals(wide)
