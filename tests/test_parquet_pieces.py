"""Parquet numeric columns read a few at a time, decoded ahead on a reader thread.

- however the columns are cut into pieces, the statistics are the same bits;
- the reader thread's errors are the same SourceError naming the file as an
  inline read, and an error or Ctrl-C in the reduction stops the thread.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamnorm.sources.parquet as P
from streamnorm import engine
from streamnorm._prefetch import Prefetch
from streamnorm.errors import NonFiniteError
from streamnorm.sources import SourceError, open_source


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "streamnorm-reader" and t.is_alive()]


def assert_no_reader_left(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while readers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not readers()


def mixed_table(n: int = 6000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ints = pa.array(rng.integers(-1000, 1000, n).astype(np.int32),
                    mask=rng.random(n) < 0.01)
    return pa.table({
        "f32": (rng.standard_normal(n) * 3 + 1e4).astype(np.float32),
        "i32": ints,
        "f64": rng.standard_normal(n),
        "u8": rng.integers(0, 256, n).astype(np.uint8),
        "f32b": rng.standard_normal(n).astype(np.float32),
        "i16": rng.integers(-30, 30, n).astype(np.int16),
    })


@pytest.fixture
def table_dir(tmp_path: Path) -> Path:
    pq.write_table(mixed_table(), tmp_path / "a.parquet", row_group_size=1500)
    pq.write_table(mixed_table(seed=1), tmp_path / "b.parquet", row_group_size=2500)
    return tmp_path


def stats_fields(stats) -> dict:
    return {k: getattr(stats, k) for k in ("count", "nan_count", "mean", "m2", "min", "max",
                                           "int_sum", "int_sumsq", "feature_names", "dtype")}


def assert_identical(a, b) -> None:
    fa, fb = stats_fields(a), stats_fields(b)
    for key in fa:
        if isinstance(fa[key], np.ndarray):
            np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)
        else:
            assert fa[key] == fb[key], key


@pytest.mark.parametrize("batch_bytes", [64 << 20, 20_000])
@pytest.mark.parametrize("workers", [1, 2])
def test_any_cut_into_pieces_gives_the_same_bits(table_dir, monkeypatch, batch_bytes, workers):
    def run(piece_bytes: int):
        monkeypatch.setattr(P, "PIECE_BYTES", piece_bytes)
        return engine.compute([str(table_dir)], workers=workers, nan_policy="omit",
                              batch_bytes=batch_bytes, shard_bytes=1)
    whole, single, pairs = run(1 << 30), run(1), run(15_000)
    for other in (single, pairs):
        assert other.rows == whole.rows == 12_000
        assert_identical(other.stats, whole.stats)
    assert whole.stats.feature_names == ("f32", "i32", "f64", "u8", "f32b", "i16")
    assert whole.stats.nan_count[1] > 0  # the int column's nulls, skipped and counted


def test_pieces_are_runs_of_columns_of_about_piece_bytes(table_dir, monkeypatch):
    source = open_source([str(table_dir / "a.parquet")], shard_bytes=1 << 30)
    (shard,) = source.shards
    monkeypatch.setattr(P, "PIECE_BYTES", 1 << 30)
    assert [first for first, _ in shard.format.read_pieces(shard)] == [0] * 4
    meta = pq.ParquetFile(table_dir / "a.parquet").metadata
    widest = max(sum(meta.row_group(i).column(j).total_uncompressed_size for j in range(6))
                 for i in range(meta.num_row_groups))
    monkeypatch.setattr(P, "PIECE_BYTES", widest // 3 + 1)  # a third of the columns, rounded down
    pieces = list(shard.format.read_pieces(shard))
    assert [first for first, _ in pieces] == [0, 2, 4] * 4
    assert all(len(cols) == 2 and len(cols[0]) == 1500 for _, cols in pieces)


def corrupt(path: Path) -> None:
    """Overwrite a page header in the third row group of column 1."""
    offset = pq.ParquetFile(path).metadata.row_group(2).column(1).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset + 40: offset + 2000] = b"\xff" * 1960
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("read_threads", [True, False])
def test_reader_errors_are_source_errors_naming_the_file(tmp_path, read_threads):
    rng = np.random.default_rng(0)
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({f"c{j}": rng.standard_normal(20000) for j in range(3)}), path,
                   row_group_size=5000, compression="snappy")
    corrupt(path)
    (shard,) = open_source([str(path)]).shards
    with pytest.raises(SourceError, match=r"bad\.parquet \(row groups 0-3\): cannot read Parquet data"):
        engine.compute_shard(shard, read_threads=read_threads)
    assert_no_reader_left()


def test_error_in_the_reduction_stops_the_reader(tmp_path):
    values = np.arange(40_000, dtype=np.float64)
    values[30_000] = np.nan
    pq.write_table(pa.table({"x": values, "y": values}), tmp_path / "n.parquet",
                   row_group_size=1000)
    (shard,) = open_source([str(tmp_path / "n.parquet")], shard_bytes=1 << 30).shards
    with pytest.raises(NonFiniteError, match="n.parquet"):
        engine.compute_shard(shard, read_threads=True)
    assert_no_reader_left()


def test_ctrl_c_in_the_reduction_stops_the_reader(tmp_path, monkeypatch):
    pq.write_table(pa.table({"x": np.arange(50_000.0)}), tmp_path / "k.parquet",
                   row_group_size=1000)
    calls = []
    real = P._TableReducer.update

    def interrupted(self, columns, first=0):
        calls.append(first)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, columns, first)

    monkeypatch.setattr(P._TableReducer, "update", interrupted)
    started = time.monotonic()
    with pytest.raises(engine.Interrupted):
        engine.compute([str(tmp_path)], workers=1)
    assert time.monotonic() - started < 60
    assert len(calls) == 3
    assert_no_reader_left()


def test_prefetch_stays_bounded_and_close_stops_an_endless_reader():
    produced = []
    closed = threading.Event()

    def endless():
        try:
            k = 0
            while True:
                produced.append(k)
                yield k
                k += 1
        finally:
            closed.set()

    ahead = Prefetch(endless(), depth=1, name="streamnorm-reader")
    consumed = []
    for item in ahead:
        consumed.append(item)
        time.sleep(0.02)  # let the reader run as far ahead as it may
        # one item queued and one in the reader's hands, at most
        assert len(produced) - len(consumed) <= 2
        if len(consumed) == 5:
            break
    ahead.close()
    assert closed.wait(5) and not ahead._thread.is_alive()
    assert consumed == [0, 1, 2, 3, 4]


def test_prefetch_reraises_the_readers_exception_after_its_items():
    def failing():
        yield 1
        yield 2
        raise SourceError("f.parquet (row group 1): cannot read Parquet data (boom)")

    with Prefetch(failing(), name="streamnorm-reader") as ahead:
        got = []
        with pytest.raises(SourceError, match=r"f\.parquet .*boom"):
            for item in ahead:
                got.append(item)
    assert got == [1, 2]
    assert_no_reader_left()
