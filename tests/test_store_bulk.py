"""Stats files are saved and loaded with whole-array work, never a Python loop per feature.

Format 2's checksum and consistency checks made a 20,000-feature load 10-20x
slower than format 1 (per-feature ``int.to_bytes``, name encoding, rational
moments and int conversions). These tests pin down what the fast path must
keep: the same bits as the exact rational definitions, a checksum that stays
canonical whatever the Arrow chunking, slicing or large types, and an amount of
Python-level work that does not grow with the number of features.
"""

from __future__ import annotations

import gc
import sys
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamnorm as sn
from _store_helpers import multiset_stats
from streamnorm.stats import exact_moments, exact_moments_array
from streamnorm.statsfile import (
    META_CHECKSUM,
    content_checksum,
    stats_from_bytes,
    stats_to_bytes,
    stats_to_table,
)

INT64_MAX = 2**63 - 1
# where the float64 fast path must hand over to Python ints: 2**53 (exact floats),
# isqrt(2**63 - 1) (squares in int64), 2**63 (int64), 10**38 (decimal128(38, 0))
EDGES = [0, 1, 2, 3, 2**31, 3_037_000_499, 3_037_000_500, 2**53, 2**62, 2**63, 2**64, 10**38]


def fraction_moments(n: int, s: int, q: int) -> tuple[float, float]:
    """The definition: each moment the exact rational, rounded once to float64."""
    if n == 0:
        return float("nan"), 0.0
    return float(Fraction(s, n)), float(Fraction(n * q - s * s, n))


def near_edges(low: int, high: int) -> st.SearchStrategy[int]:
    signed = st.sampled_from(EDGES).flatmap(
        lambda e: st.sampled_from([e, -e])).flatmap(lambda e: st.integers(e - 2, e + 2))
    return signed.map(lambda v: min(max(v, low), high))


def anywhere(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(low, high), near_edges(low, high),
                     st.integers(max(low, -1000), min(high, 1000)))


@st.composite
def sums_triple(draw) -> tuple[int, int, int]:
    """(count, sum, sum of squares) anywhere in the stored range, edges included."""
    kind = draw(st.sampled_from(["free", "numerator edge", "overflow edge"]))
    n = draw(anywhere(0, INT64_MAX))
    if kind == "free" or n == 0:
        return n, draw(anywhere(-(10**38), 10**38)), draw(anywhere(-(10**38), 10**38))
    if kind == "numerator edge":  # n * q - s * s within a few units of +-2**53
        n = min(n, 2**20)
        s = draw(st.integers(-(2**26), 2**26))
        target = draw(st.sampled_from([2**53, -(2**53)])) + draw(st.integers(-3, 3))
        return n, s, (s * s + target) // n
    return n, draw(anywhere(-(2**40), 2**40)), INT64_MAX // n + draw(st.integers(-2, 2))


def same_bits(a, b) -> bool:
    return np.asarray(a, np.float64).tobytes() == np.asarray(b, np.float64).tobytes()


@settings(max_examples=400, deadline=None)
@given(triples=st.lists(sums_triple(), min_size=1, max_size=12))
def test_exact_moments_array_is_bit_identical_to_fractions(triples):
    count, total, total_sq = (list(c) for c in zip(*triples))
    mean, m2 = exact_moments_array(np.array(count, dtype=np.int64), total, total_sq)
    want = [fraction_moments(*t) for t in triples]
    assert same_bits(mean, [w[0] for w in want]), (triples, mean, want)
    assert same_bits(m2, [w[1] for w in want]), (triples, m2, want)
    for t, w in zip(triples, want):
        assert same_bits(exact_moments(*t), w)


def test_exact_moments_array_takes_the_fast_path_up_to_the_edge_only():
    # the last features inside the float64 bounds and the first outside, side by side
    n = [1, 1, 3, 3, 2**53, 2**53 + 1]
    s = [3_037_000_499, 3_037_000_500, 2**53, 2**53 + 1, 1, 1]
    q = [3_037_000_499**2, 3_037_000_500**2, 2**106, 2**106 + 5, 1, 1]
    mean, m2 = exact_moments_array(n, s, q)
    want = [fraction_moments(*t) for t in zip(n, s, q)]
    assert same_bits(mean, [w[0] for w in want]) and same_bits(m2, [w[1] for w in want])


def test_exact_moments_array_refuses_mismatched_shapes():
    with pytest.raises(sn.StreamnormError, match="one shape"):
        exact_moments_array([1, 2], [1], [1, 2])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    features=st.lists(
        st.lists(st.tuples(st.integers(-(2**58), 2**58), st.integers(1, 40)), min_size=1,
                 max_size=6),
        min_size=1, max_size=4),
    parts=st.integers(2, 5),
    data=st.data(),
)
def test_merge_all_of_exact_sums_beyond_int64_is_exact(features, parts, data):
    # each feature's values dealt out to `parts` shards; merged shards == the whole
    names = [f"f{i}" for i in range(len(features))]
    shards = [[[] for _ in features] for _ in range(parts)]
    for f, pairs in enumerate(features):
        for pair in pairs:
            shards[data.draw(st.integers(0, parts - 1))][f].append(pair)
    whole = multiset_stats("int64", features, names=names)
    merged = sn.Stats.merge_all([multiset_stats("int64", s, names=names) for s in shards])
    assert merged.equals(whole)
    assert all(type(v) is int for v in merged.int_sum + merged.int_sumsq)
    assert stats_from_bytes(stats_to_bytes(merged)).equals(whole)


# -- the checksum does not depend on how Arrow holds the values ----------------------
def stats_kinds() -> dict[str, sn.Stats]:
    x = np.arange(60, dtype=np.uint8).reshape(12, 5) * 4
    y = np.linspace(1e9, 1e9 + 1, 36).reshape(12, 3)
    return {
        "uint8 + histogram": sn.compute_stats([x], layout="NF", histogram=True,
                                              feature_names=["r", "gé", "b", "", "α" * 9]),
        "float64 offset": sn.compute_stats([y[:5], y[5:]], layout="NF",
                                           feature_names=["a", "ü", "c"]),
        "int64 wide sums": multiset_stats("int64", [[(2**60, 7)], [(-(2**61), 3), (5, 2)], [(1, 1)]],
                                          names=["wide", "négatif", "one"]),
    }


def large_types(table: pa.Table) -> pa.Table:
    fields = [pa.field(f.name, pa.large_string() if f.name == "feature" else
                       pa.large_list(pa.int64()) if f.name == "histogram" else f.type,
                       nullable=f.nullable) for f in table.schema]
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(stats_kinds())), data=st.data(),
       large=st.booleans(), row_group_size=st.integers(1, 6),
       compression=st.sampled_from(["none", "zstd", "gzip"]), dictionary=st.booleans())
def test_checksum_is_canonical_across_chunks_offsets_and_large_types(
        kind, data, large, row_group_size, compression, dictionary):
    stats = stats_kinds()[kind]
    table = stats_to_table(stats, split="s")
    stored = table.schema.metadata[META_CHECKSUM.encode()].decode()
    n = table.num_rows
    order = data.draw(st.permutations(range(n)))
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    shuffled = table.take(order)
    # chunks that are slices of their buffers (non-zero array offsets)...
    bounds = [0, *cuts, n]
    chunked = pa.concat_tables([shuffled.slice(a, b - a) for a, b in zip(bounds, bounds[1:])])
    # ...and one array sliced out of a longer one
    padded = pa.concat_tables([shuffled, shuffled, shuffled]).combine_chunks().slice(n, n)
    for candidate in (chunked, padded):
        candidate = large_types(candidate) if large else candidate
        assert content_checksum(candidate) == stored
        sink = pa.BufferOutputStream()
        pq.write_table(candidate, sink, row_group_size=row_group_size, compression=compression,
                       use_dictionary=dictionary)
        assert stats_from_bytes(sink.getvalue()).equals(stats)


# -- no Python-level work per feature ----------------------------------------------
def python_calls(fn) -> int:
    """Python function calls, generator resumptions and builtin calls made from Python."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event in ("call", "c_call")

    enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection's callbacks would count as work of whichever call it hit
    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
        if enabled:
            gc.enable()
    return calls


def stats_of_width(dtype: str, n_features: int) -> sn.Stats:
    rng = np.random.default_rng(n_features)
    if dtype == "int64, one wide sum":  # one feature beyond int64 must not slow the others
        features = [[(int(v), 3)] for v in rng.integers(-1000, 1000, n_features)]
        features[n_features // 2] = [(2**61, 9)]
        return multiset_stats("int64", features, names=[f"g-{i}" for i in range(n_features)])
    x = rng.integers(0, 200, size=(20, n_features)).astype(dtype)
    return sn.compute_stats([x], layout="NF", histogram=dtype == "uint8",
                            feature_names=[f"gène-{i}" for i in range(n_features)])


@pytest.mark.parametrize("dtype", ["uint16", "uint8", "float32", "int64, one wide sum"])
def test_save_load_and_merge_do_no_python_work_per_feature(dtype):
    work = {}
    for n_features in (10, 3000):
        stats = stats_of_width(dtype, n_features)
        data = stats_to_bytes(stats, created_at="2026-01-01T00:00:00Z")
        assert stats_from_bytes(data).equals(stats)  # warm-up: imports, caches
        work[n_features] = (python_calls(lambda s=stats: stats_to_bytes(s)),
                            python_calls(lambda d=data: stats_from_bytes(d)),
                            python_calls(lambda s=stats: sn.Stats.merge_all([s, s])))
    assert work[3000] == work[10], work
