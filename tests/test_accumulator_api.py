"""StatsAccumulator: argument checks, bad input, state dicts, merges."""

import json
import pickle
import re

import numpy as np
import pytest
import torch

import streamnorm as sn
from streamnorm.errors import DTypeError, IncompatibleStatsError, LayoutError


@pytest.mark.parametrize("kwargs,match", [
    (dict(layout="nchw"), "upper-case"),
    (dict(nan_policy="ignore"), "nan_policy"),
    (dict(threads=0), "threads"),
    (dict(threads=True), "threads"),
    (dict(feature_names="RGB"), "sequence of names"),
    (dict(feature_names=["a", "a"]), "unique"),
    (dict(layout="N", feature_names=["a", "b"]), "one feature"),
])
def test_constructor_checks_arguments_eagerly(kwargs, match):
    with pytest.raises(sn.StreamnormError, match=match):
        sn.StatsAccumulator(**kwargs)


def test_rank_mismatch_names_batch_layout_and_shape():
    acc = sn.StatsAccumulator("NCHW")
    with pytest.raises(LayoutError, match=r"batch 0 of shape \(3, 4, 4\).*'NCHW'"):
        acc.update(np.zeros((3, 4, 4), np.uint8))


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.array([object(), 1], dtype=object),
                                 np.zeros(3, np.complex64), np.zeros(3, "datetime64[s]")])
def test_unsupported_dtypes(bad):
    with pytest.raises(DTypeError, match=re.escape(f"batch 0 has dtype {bad.dtype}")):
        sn.StatsAccumulator("N").update(bad)


def test_feature_count_change_mid_stream():
    acc = sn.StatsAccumulator("NF").update(np.zeros((2, 3)))
    with pytest.raises(LayoutError, match=r"batch 1 has 4 features.*expects 3 features"):
        acc.update(np.zeros((2, 4)))


def test_feature_names_must_match_feature_count():
    acc = sn.StatsAccumulator("NCHW", feature_names=["r", "g", "b"])
    with pytest.raises(LayoutError, match="3 feature names"):
        acc.update(np.zeros((1, 4, 2, 2), np.uint8))


def test_int_float_mix_and_histogram_dtype():
    acc = sn.StatsAccumulator("NF").update(np.zeros((2, 3), np.uint8))
    with pytest.raises(DTypeError, match="cast them to one dtype"):
        acc.update(np.zeros((2, 3), np.float32))
    # histogram=True keeps a distribution for every dtype now; kinds that cannot share one are refused
    acc = sn.StatsAccumulator("NF", histogram=True).update(np.zeros((2, 3), np.int16))
    with pytest.raises(DTypeError, match="log grid"):
        acc.update(np.zeros((2, 3), np.int32))


def test_integer_dtypes_can_be_mixed_exactly(rng):
    a = rng.integers(0, 255, (10, 2))
    b = rng.integers(-30000, 30000, (10, 2))
    acc = sn.StatsAccumulator("NF").update(a.astype(np.uint8)).update(b.astype(np.int16))
    s = acc.result()
    both = np.concatenate([a, b])
    assert s.dtype == "int16" and list(s.int_sum) == both.sum(axis=0).tolist()
    assert s.min.tolist() == both.min(axis=0).tolist()


def test_gpu_tensors_and_other_objects_are_refused_clearly():
    with pytest.raises(DTypeError, match="numpy array or a CPU torch tensor"):
        sn.StatsAccumulator("N").update({"a": 1})
    with pytest.raises(sn.StreamnormError, match="key="):
        sn.compute_stats([(np.zeros((1, 3, 2, 2)), 0)])


def test_result_before_any_batch():
    with pytest.raises(sn.StreamnormError, match="no data"):
        sn.StatsAccumulator("NF").result()


def test_empty_batches_count_but_add_nothing(rng):
    x = rng.standard_normal((5, 2))
    acc = sn.StatsAccumulator("NF").update(x[:0]).update(x)
    assert acc.n_batches == 2 and acc.result().count.tolist() == [5, 5]


@pytest.mark.parametrize("dtype,histogram", [(np.uint8, True), (np.uint8, False),
                                             (np.int32, False), (np.float32, False)])
def test_state_dict_roundtrip_then_continue_equals_never_stopping(dtype, histogram, rng):
    x = (rng.standard_normal((60, 3, 5)) * 40 + 100).astype(dtype)
    straight = sn.StatsAccumulator("NCL", histogram=histogram)
    for i in range(0, 60, 10):
        straight.update(x[i : i + 10])
    first = sn.StatsAccumulator("NCL", histogram=histogram)
    for i in range(0, 30, 10):
        first.update(x[i : i + 10])
    state = first.state_dict()
    # plain values only: survives JSON (arrays as lists) without pickle
    text = json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in state.items()})
    resumed = sn.StatsAccumulator("NCL", histogram=histogram)
    resumed.load_state_dict(json.loads(text))
    for i in range(30, 60, 10):
        resumed.update(x[i : i + 10])
    assert resumed.result().equals(straight.result())
    assert resumed.n_batches == straight.n_batches == 6


def test_load_state_dict_refuses_other_configs_and_garbage(rng):
    state = sn.StatsAccumulator("NF").update(rng.standard_normal((3, 2))).state_dict()
    with pytest.raises(IncompatibleStatsError):
        sn.StatsAccumulator("NCHW").load_state_dict(state)
    with pytest.raises(sn.StreamnormError, match="newer"):
        sn.StatsAccumulator("NF").load_state_dict({**state, "version": 99})
    with pytest.raises(sn.StreamnormError, match="malformed|shape"):
        sn.StatsAccumulator("NF").load_state_dict({**state, "mean": [1.0]})
    with pytest.raises(sn.StreamnormError):
        sn.StatsAccumulator("NF").load_state_dict({"format": "nope"})


def test_merge_into_empty_and_from_empty(rng):
    x = rng.integers(0, 9, (6, 2), dtype=np.uint8)
    empty = sn.StatsAccumulator("NF")
    full = sn.StatsAccumulator("NF").update(x)
    assert empty.merge(full).result().equals(full.result())
    assert full.merge(sn.StatsAccumulator("NF")).result().equals(empty.result())
    with pytest.raises(IncompatibleStatsError):
        full.merge(sn.StatsAccumulator("NF").update(np.zeros((1, 2))))
    with pytest.raises(IncompatibleStatsError):
        full.merge(sn.StatsAccumulator("NCHW"))


def test_float_merge_with_different_shifts(rng):
    x = rng.standard_normal((100, 2)) + 1e7
    a = sn.StatsAccumulator("NF").update(x[:50])
    b = sn.StatsAccumulator("NF").update(x[50:] + 0.0)
    got = a.merge(b).result()
    np.testing.assert_allclose(got.var, x.var(axis=0), rtol=1e-9)
    np.testing.assert_allclose(got.mean, x.mean(axis=0), rtol=1e-15)


def test_accumulators_pickle_for_dask_and_copy(rng):
    x = rng.integers(0, 9, (64, 3, 64, 64), dtype=np.uint8)
    acc = sn.StatsAccumulator("NCHW", threads=2).update(x)
    clone = pickle.loads(pickle.dumps(acc))
    assert clone.update(x).result().equals(acc.copy().update(x).result())


def test_compute_stats_from_a_dataloader_with_workers():
    ds = torch.utils.data.TensorDataset(torch.arange(400, dtype=torch.uint8).reshape(100, 4),
                                        torch.zeros(100))
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)
    s = sn.compute_stats(loader, layout="NF", key=0)
    ref = np.arange(400, dtype=np.uint8).reshape(100, 4).astype(np.float64)
    assert s.mean.tolist() == ref.mean(axis=0).tolist()
    s2 = sn.compute_stats(({"x": b[0]} for b in loader), layout="NF", key="x")
    assert s2.equals(s)
