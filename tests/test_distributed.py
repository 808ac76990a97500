"""merge_across_ranks: two gloo processes on the CPU, exact and identical on every rank."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import streamnorm as sn
from streamnorm.distributed import decode_state, encode_state, merge_across_ranks
from streamnorm.errors import StreamnormError

WORLD = 2


def shard_data(rank: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + rank)
    images = rng.integers(0, 256, (5 + 3 * rank, 3, 6, 6), dtype=np.uint8)
    table = rng.standard_normal((40 + 7 * rank, 4)) * [1, 10, 1e-3, 5] + [1e6, -3, 0, 42]
    return images, table


def stats_fields(s: sn.Stats) -> dict:
    return json.loads(encode_state(s).decode())["state"]  # exact: hex floats, str big ints


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        images, table = shard_data(rank)
        img_acc = sn.StatsAccumulator(histogram=True).update(images)
        tab_acc = sn.StatsAccumulator(layout="NF").update(table)
        empty = sn.StatsAccumulator(layout="NF")
        if rank == 0:
            empty.update(table[:3])
        result = {
            "images_acc": stats_fields(merge_across_ranks(img_acc).result()),
            "images_stats": stats_fields(merge_across_ranks(img_acc.result())),
            "table_acc": stats_fields(merge_across_ranks(tab_acc).result()),
            "table_stats": stats_fields(merge_across_ranks(tab_acc.result())),
            "one_rank_empty": stats_fields(merge_across_ranks(empty).result()),
            "input_unchanged": img_acc.result().count.tolist(),
        }
        mixed = img_acc if rank == 0 else img_acc.result()
        try:
            merge_across_ranks(mixed)
        except StreamnormError as exc:
            result["mixed_error"] = str(exc)
        other_layout = sn.StatsAccumulator(layout="NCHW" if rank == 0 else "NHWC")
        other_layout.update(images if rank == 0 else images.transpose(0, 2, 3, 1))
        try:
            merge_across_ranks(other_layout.result())
        except StreamnormError as exc:
            result["layout_error"] = str(exc)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


def run_ranks(tmp_path: Path, timeout_s: float = 150.0) -> list[dict]:
    ctx = mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)),
                             nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"gloo ranks did not finish within {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join(5)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.timeout(200)
def test_two_gloo_ranks(tmp_path):
    results = run_ranks(tmp_path)
    r0, r1 = results
    for name in ("images_acc", "images_stats", "table_acc", "table_stats", "one_rank_empty"):
        assert r0[name] == r1[name], f"{name} differs between ranks"

    shards = [shard_data(r) for r in range(WORLD)]
    images = np.concatenate([s[0] for s in shards])
    table = np.concatenate([s[1] for s in shards])
    single = sn.compute_stats([images], histogram=True)
    # integer statistics: bit-identical to one pass over everything
    assert decode_state(json.dumps({"kind": "stats", "state": r0["images_acc"]}).encode()
                        ).equals(single)
    assert r0["images_stats"] == r0["images_acc"]
    # float statistics: Chan's merge, identical on both ranks, close to one pass
    merged = decode_state(json.dumps({"kind": "stats", "state": r0["table_acc"]}).encode())
    np.testing.assert_allclose(merged.mean, table.mean(0), rtol=1e-14)
    np.testing.assert_allclose(merged.var, table.var(0), rtol=1e-12)
    assert merged.count.tolist() == [len(table)] * 4
    empty = decode_state(json.dumps({"kind": "stats", "state": r0["one_rank_empty"]}).encode())
    assert empty.count.tolist() == [3] * 4
    assert r0["input_unchanged"] == [len(shards[0][0]) * 36] * 3
    for r in results:
        assert "different kinds" in r["mixed_error"]
        assert "rank 1's statistics cannot be merged" in r["layout_error"]


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float64, (5, 3), elements=st.floats(-1e100, 1e100)
                 | st.sampled_from([np.nan, np.inf, -np.inf])),
       st.integers(0, 2**200))
def test_encoding_is_exact(values, big):
    stats = sn.compute_stats([values], layout="NF", nan_policy="propagate")
    assert decode_state(encode_state(stats)).equals(stats)
    ints = sn.compute_stats([np.array([[1, 2], [3, 4]], np.int32)], layout="NF")
    forged = sn.Stats(**{f: getattr(ints, f) for f in ("layout", "feature_names", "dtype",
                         "count", "nan_count", "mean", "m2", "min", "max")},
                      int_sum=(big, -big), int_sumsq=(big * big, 1))
    assert decode_state(encode_state(forged)).equals(forged)
    payload = json.loads(encode_state(forged))
    assert payload["state"]["__dict__"]["int_sumsq"][0] == (
        {"__int__": str(big * big)} if big * big >= 2**53 else big * big)


def test_accumulator_state_round_trip_continues_exactly():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((30, 3)) + 1e8, rng.standard_normal((20, 3)) + 1e8
    acc = sn.StatsAccumulator(layout="NF").update(a)
    clone = decode_state(encode_state(acc), like=acc)
    assert clone is not acc
    assert clone.update(b).result().equals(acc.update(b).result())


def test_not_initialized_returns_a_copy():
    acc = sn.StatsAccumulator(layout="NF").update(np.ones((3, 2), np.uint8))
    out = merge_across_ranks(acc)
    assert out is not acc and out.result().equals(acc.result())
    out.update(np.ones((3, 2), np.uint8))
    assert acc.result().count.tolist() == [3, 3]
    stats = acc.result()
    assert merge_across_ranks(stats).equals(stats)
    with pytest.raises(StreamnormError, match="Stats or StatsAccumulator"):
        merge_across_ranks({"mean": 1})


def test_malformed_payloads():
    with pytest.raises(StreamnormError, match="malformed"):
        decode_state(b"\xff\x00")
    with pytest.raises(StreamnormError, match="malformed"):
        decode_state(b'{"kind": "pickle", "state": {}}')
    with pytest.raises(StreamnormError, match="malformed"):
        decode_state(b'{"kind": "stats", "state": {"__code__": 1}}')


def test_distributions_travel_bit_exactly_between_ranks():
    """Found at merge time: the rank encoding dropped Stats.distribution (16-bit and float grids)."""
    rng = np.random.default_rng(3)
    for x in (rng.integers(0, 65536, (500, 2)).astype(np.uint16), rng.lognormal(size=(500, 2))):
        s = sn.compute_stats([x], layout="NF", histogram=True)
        back = decode_state(encode_state(s))
        assert back.distribution is not None and back.equals(s)
        assert np.array_equal(back.quantile([0.1, 0.9]), s.quantile([0.1, 0.9]))
