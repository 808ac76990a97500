"""Item 11 of issue 8: misuse raises a clear StreamnormError, never a raw Python or numba error."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import streamnorm as sn

SRC = Path(__file__).resolve().parents[1] / "src"


def test_np_matrix_batches_are_read_as_plain_arrays():
    m = np.matrix([[1, 2], [3, 5], [7, 11]], dtype=np.uint8)
    got = sn.compute_stats(m, layout="NF")
    assert got.equals(sn.compute_stats(np.asarray(m), layout="NF"))
    f = np.matrix([[1.5, 2.0], [3.0, 5.0]])
    assert sn.compute_stats([f, f], layout="NF").mean.tolist() == [2.25, 3.5]


@pytest.mark.parametrize("source", [np.float64(3.0), 3, 2.5, None, "abc", {"x": np.zeros(3)}])
def test_compute_stats_refuses_a_source_that_is_no_iterable_of_batches(source):
    with pytest.raises(sn.StreamnormError, match="pass an iterable of batches"):
        sn.compute_stats(source, layout="N")


@pytest.mark.parametrize("state", [[1, 2], None, "state", 3, np.zeros(3)])
def test_load_state_dict_refuses_non_dicts(state):
    acc = sn.StatsAccumulator("NF")
    with pytest.raises(sn.StreamnormError, match="state is a dict from state_dict"):
        acc.load_state_dict(state)


def test_masked_arrays_skip_their_masked_values_and_unmasked_ones_read():
    x = np.ma.masked_array([[1.0, 2.0], [3.0, 99.0]], mask=[[False, False], [False, True]])
    acc = sn.StatsAccumulator("NF")
    s = acc.update(x).result()
    assert s.mean.tolist() == [2.0, 2.0] and s.masked_count.tolist() == [0, 1] and s.count.tolist() == [2, 1]
    acc = sn.StatsAccumulator("NF")
    clear = np.ma.masked_array([[1.0, 2.0], [3.0, 4.0]], mask=False)
    assert acc.update(clear).result().mean.tolist() == [2.0, 3.0]
    t = np.ma.masked_array(np.arange(4, dtype=np.uint8))
    assert sn.compute_stats(t, layout="N").int_sum == (6,)


def test_bfloat16_batches_are_recorded_as_bfloat16():
    t = torch.tensor([[1.5, 2.0], [3.0, -4.0]], dtype=torch.bfloat16)
    s = sn.compute_stats([t[:1], t[1:]], layout="NF")
    assert s.dtype == "bfloat16" and s.mean.tolist() == [2.25, -1.0]
    acc = sn.StatsAccumulator("NF").update(t)
    resumed = sn.StatsAccumulator("NF")
    resumed.load_state_dict(acc.state_dict())
    assert resumed.dtype_name == "bfloat16" and resumed.result().equals(acc.result())
    assert (s + s).dtype == "bfloat16"
    mixed = sn.compute_stats([t, t.float()], layout="NF")
    assert mixed.dtype == "float32"
    assert (s + mixed).dtype == "float32"
    assert sn.compute_stats([t, t.double()], layout="NF").dtype == "float64"


def test_quantile_of_a_nested_sequence_blames_the_shape():
    s = sn.compute_stats(np.arange(10, dtype=np.uint8), layout="N", histogram=True)
    with pytest.raises(sn.StreamnormError, match=r"flat sequence.*shape \(1, 1\)"):
        s.quantile([[0.5]])
    with pytest.raises(sn.StreamnormError, match=r"in \[0, 1\]"):
        s.quantile([0.5, 1.5])
    with pytest.raises(sn.StreamnormError, match="number"):
        s.quantile("median")


@pytest.mark.parametrize("ddof", [True, False, 1.0, 0.5, "1", None, -1])
def test_variance_refuses_bools_non_integers_and_negatives(ddof):
    s = sn.compute_stats(np.arange(5.0), layout="N")
    with pytest.raises(sn.StreamnormError, match="ddof must be an integer >= 0"):
        s.variance(ddof)


def test_variance_takes_numpy_integers():
    s = sn.compute_stats(np.arange(5.0), layout="N")
    assert s.variance(np.int64(1)).tolist() == [2.5]


def test_zip_imported_package_with_an_unwritable_cache_compiles_without_cache(tmp_path):
    archive = tmp_path / "sn.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in (SRC / "streamnorm").rglob("*.py"):
            zf.write(path, path.relative_to(SRC).as_posix())
    blocker = tmp_path / "a-file"
    blocker.write_text("the user cache path runs through this file")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    env.update(HOME=str(blocker), XDG_CACHE_HOME=str(blocker))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import numpy as np, streamnorm as sn; "
            "assert sn.__file__.startswith(sys.argv[1]), sn.__file__; "
            "print(sn.compute_stats([np.arange(6, dtype=np.uint8).reshape(3, 2)], layout='NF').mean.tolist(), "
            "sn.compute_stats(np.arange(4.0), layout='N').mean.tolist())")
    proc = subprocess.run([sys.executable, "-c", code, str(archive)], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[2.0, 3.0] [1.5]"
    assert "cannot cache compiled kernels" in proc.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_every_error_class_of_the_contract_is_exported():
    from streamnorm import errors

    for name in ("StreamnormError", "StatsFileError", "LayoutError", "DTypeError", "NonFiniteError",
                 "IncompatibleStatsError", "SplitNameError", "MaskError"):
        cls = getattr(sn, name)
        assert cls is getattr(errors, name) and issubclass(cls, sn.StreamnormError)
        assert name in sn.__all__
