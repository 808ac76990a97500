"""WebDataset ``.tar`` shards (issue 11): samples, --key, .npy members, brace ranges, errors.

Every shard here is written by the real ``webdataset`` package's ``TarWriter``.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import braceexpand  # webdataset's own expander: the oracle
import fsspec
import numpy as np
import pytest
import webdataset as wds  # dev dependency: the writer of the test shards
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import streamnorm as sn
from offline_helpers import SRC, run_cli
from streamnorm import engine
from streamnorm.cli import main
from streamnorm.errors import LayoutError
from streamnorm.sources import BadRecordError, SourceError, open_source
from streamnorm.sources._braces import expand_braces
from streamnorm.sources.webdataset import BadMemberError, split_key


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def write_shards(root, rng, n_shards=3, per_shard=5, side=(4, 6), extra=None):
    """``train-000.tar``...; each sample a PNG (kept as bytes), an int32 ``npy`` and a label."""
    images, arrays = [], []
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        with wds.TarWriter(str(root / f"train-{s:03d}.tar")) as w:
            for i in range(per_shard):
                im = rng.integers(0, 256, (*side, 3), dtype=np.uint8)
                arr = rng.integers(-1000, 1000, (2, 3), dtype=np.int32)
                images.append(im)
                arrays.append(arr)
                sample = {"__key__": f"s{s}_{i:04d}", "png": png(im), "npy": arr, "cls": i}
                sample.update(extra(s, i) if extra else {})
                w.write(sample)
    return images, arrays


def assert_exact(stats: sn.Stats, values: np.ndarray) -> None:
    """Mean and m2 equal to Python-int oracles (values: rows x features)."""
    values = values.astype(np.int64)
    n = values.shape[0]
    sums = values.sum(axis=0)
    assert stats.count.tolist() == [n] * values.shape[1]
    assert stats.mean.tolist() == [s / n for s in sums.tolist()]
    dev = (values * n - sums).astype(object)
    m2 = (dev ** 2).sum(axis=0)
    for f in range(values.shape[1]):
        assert stats.m2[f] == pytest.approx(float(m2[f]) / n ** 2, rel=1e-15)
    assert stats.min.tolist() == values.min(axis=0).astype(float).tolist()
    assert stats.max.tolist() == values.max(axis=0).astype(float).tolist()


def pixels(images) -> np.ndarray:
    return np.concatenate([im.reshape(-1, im.shape[-1]) for im in images])


# -- samples -> images -----------------------------------------------------------------


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n_shards=st.integers(1, 3), per_shard=st.integers(1, 6),
       workers=st.integers(1, 2))
def test_images_are_exact_and_identical_across_workers(tmp_path_factory, seed, n_shards, per_shard,
                                                       workers):
    root = tmp_path_factory.mktemp("wds")
    images, _ = write_shards(root, np.random.default_rng(seed), n_shards, per_shard)
    run = engine.compute([str(root / "train-*.tar")], workers=workers, histogram=True)
    assert run.source.kind == "webdataset" and run.stats.layout == "NHWC"
    assert run.rows == len(images) and run.shards == n_shards
    assert_exact(run.stats, pixels(images))
    hist = np.stack([np.bincount(pixels(images)[:, c], minlength=256) for c in range(3)])
    assert np.array_equal(run.stats.histogram, hist)
    assert run.stats.equals(engine.compute([str(root)], workers=1, histogram=True).stats)


def test_dask_engine_gives_the_same_stats(tmp_path):
    images, _ = write_shards(tmp_path, np.random.default_rng(1))
    local = engine.compute([str(tmp_path)], workers=2)
    dask = engine.compute([str(tmp_path)], engine="dask", workers=2)
    assert dask.stats.equals(local.stats)
    assert_exact(dask.stats, pixels(images))


def test_brace_range_glob_and_fsspec_url_name_the_same_shards(tmp_path):
    write_shards(tmp_path, np.random.default_rng(2))
    by_range = engine.compute([str(tmp_path / "train-{000..002}.tar")])
    by_list = engine.compute([str(tmp_path / "train-{000,001,002}.tar")])
    by_glob = engine.compute([str(tmp_path / "train-*.tar")])
    assert by_range.shards == 3 and by_range.stats.equals(by_glob.stats)
    assert by_list.stats.equals(by_glob.stats)
    fs = fsspec.filesystem("memory")
    for s in range(3):
        fs.pipe(f"/wds-test/train-{s:03d}.tar", (tmp_path / f"train-{s:03d}.tar").read_bytes())
    try:
        remote = engine.compute(["memory://wds-test/train-{000..002}.tar"])
        assert remote.stats.equals(by_glob.stats)
    finally:
        fs.rm("/wds-test", recursive=True)
    with pytest.raises(SourceError, match=r"train-003\.tar: no such file"):
        engine.compute([str(tmp_path / "train-{000..005}.tar")])


def test_key_chooses_the_member_when_a_sample_has_several_images(tmp_path):
    rng = np.random.default_rng(3)
    jpgs = {}

    def extra(s, i):
        im = np.full((5, 5, 3), 10 * i + s, np.uint8)
        jpgs[(s, i)] = im
        return {"seg.png": png(im)}

    images, _ = write_shards(tmp_path, rng, 2, 3, extra=extra)
    with pytest.raises(BadMemberError, match=r"train-000\.tar member s0_0000: .*several image "
                                             r"members \(cls, npy, png, seg\.png\); pass --key"):
        engine.compute([str(tmp_path)])
    run = engine.compute([str(tmp_path)], key="png")
    assert_exact(run.stats, pixels(images))
    seg = engine.compute([str(tmp_path)], key="seg.png")
    assert_exact(seg.stats, pixels(list(jpgs.values())))
    with pytest.raises(SourceError, match=r"--key 'cls'.*images .* or \.npy arrays"):
        engine.compute([str(tmp_path)], key="cls")


def test_key_is_refused_for_other_formats(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(6.0))
    with pytest.raises(SourceError, match=r"--key chooses a member of WebDataset samples, but the "
                                          r"sources are npy files .*x\.npy.*; drop --key"):
        engine.compute([str(tmp_path / "x.npy")], key="npy")


def test_sample_without_the_key_is_a_bad_record_naming_shard_and_sample(tmp_path):
    write_shards(tmp_path, np.random.default_rng(4), 1, 2)
    with pytest.raises(BadRecordError, match=r"train-000\.tar member s0_0000: .*no 'jpg' member "
                                             r"\(it has cls, npy, png\)"):
        engine.compute([str(tmp_path)], key="jpg")


# -- .npy members -----------------------------------------------------------------------


def test_npy_members_are_exact_with_layout(tmp_path):
    _, arrays = write_shards(tmp_path, np.random.default_rng(5))
    with pytest.raises(LayoutError, match=r"member s0_0000\.npy holds a 2-D array .* --layout"):
        engine.compute([str(tmp_path)], key="npy")
    run = engine.compute([str(tmp_path)], key="npy", layout="NFL")
    assert run.stats.layout == "NFL" and run.stats.dtype == "int32"
    stacked = np.stack(arrays)  # (N, F=2, L=3)
    assert_exact(run.stats, stacked.transpose(0, 2, 1).reshape(-1, 2))
    flat = engine.compute([str(tmp_path)], key="npy", layout="NHW")
    assert flat.stats.n_features == 1


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.lists(st.integers(-2**31, 2**31 - 1), min_size=3, max_size=3),
                       min_size=1, max_size=20),
       per_shard=st.integers(1, 7))
def test_1d_npy_members_default_to_nf_and_are_exact(tmp_path_factory, values, per_shard):
    root = tmp_path_factory.mktemp("npy")
    rows = np.array(values, dtype=np.int32)
    for s, lo in enumerate(range(0, len(rows), per_shard)):
        with wds.TarWriter(str(root / f"part-{s:04d}.tar")) as w:
            for i, row in enumerate(rows[lo:lo + per_shard]):
                w.write({"__key__": f"{s}-{i}", "npy": row})
    run = engine.compute([str(root)], key="npy", batch_bytes=16)
    assert run.stats.layout == "NF" and run.rows == len(rows)
    assert_exact(run.stats, rows)


# -- bad members, bad tars, the command line ------------------------------------------------


def _corrupt_second_png(path):
    """Rewrite a tar with the second sample's PNG cut short (a corrupt member)."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for m, data in members:
            if m.name == "s1_0001.png":
                data = data[:40]
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def test_corrupt_member_names_shard_and_member_and_is_skipped_with_skip_bad(tmp_path):
    images, _ = write_shards(tmp_path, np.random.default_rng(6))
    _corrupt_second_png(tmp_path / "train-001.tar")
    with pytest.raises(BadMemberError, match=r"train-001\.tar member s1_0001\.png: cannot decode "
                                             r"member"):
        engine.compute([str(tmp_path)])
    run = engine.compute([str(tmp_path)], skip_bad=True)
    assert [w for w, _ in run.skipped] == [f"{tmp_path}/train-001.tar member s1_0001.png"]
    assert_exact(run.stats, pixels(images[:6] + images[7:]))
    r = run_cli("compute", str(tmp_path), "--store", str(tmp_path / "st"), "--split", "train",
                "--no-progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "train-001.tar member s1_0001.png" in r.stderr


def test_truncated_tar_is_an_error_naming_the_shard_and_last_member(tmp_path):
    images, _ = write_shards(tmp_path, np.random.default_rng(7))
    path = tmp_path / "train-002.tar"
    path.write_bytes(path.read_bytes()[:2600])
    with pytest.raises(SourceError, match=r"train-002\.tar: truncated or corrupt tar after member "
                                          r"s2_000\d\.\w+ .*--skip-bad"):
        engine.compute([str(tmp_path)])
    run = engine.compute([str(tmp_path)], skip_bad=True)
    assert run.skipped[-1][0] == f"{tmp_path}/train-002.tar"
    assert 10 <= run.rows < 15


def test_cli_key_npy_with_checkpoint_resume_and_progress(tmp_path, capsys, monkeypatch):
    _, arrays = write_shards(tmp_path / "data", np.random.default_rng(8))
    ckpt = tmp_path / "ckpt"
    from streamnorm.sources.webdataset import WebDatasetFormat

    original = WebDatasetFormat.reduce

    def fail_on_third(self, shard, *args, **kwargs):
        if shard.files[0].url.endswith("train-002.tar"):
            raise SourceError("simulated crash")
        return original(self, shard, *args, **kwargs)

    monkeypatch.setattr(WebDatasetFormat, "reduce", fail_on_third)
    args = ["compute", str(tmp_path / "data" / "train-{000..002}.tar"), "--key", "npy",
            "--layout", "NFL", "--store", str(tmp_path / "st"), "--split", "train",
            "--checkpoint", str(ckpt), "--workers", "1"]
    assert main(args + ["--no-progress"]) == 1
    assert "simulated crash" in capsys.readouterr().err
    assert len(list((ckpt / "done").glob("*.json"))) == 2  # two shards kept for the rerun
    monkeypatch.setattr(WebDatasetFormat, "reduce", original)
    assert main(args + ["--no-progress"]) == 0
    stats = sn.load_stats(tmp_path / "st", "train")
    assert_exact(stats, np.stack(arrays).transpose(0, 2, 1).reshape(-1, 2))
    engine.compute([str(tmp_path / "data")], key="npy", layout="NFL", progress=True)
    assert "15 samples" in capsys.readouterr().err


def test_reading_needs_no_webdataset_package(tmp_path):
    images, _ = write_shards(tmp_path, np.random.default_rng(9), 1, 3)
    script = (f"import sys; sys.path.insert(0, {SRC!r}); sys.modules['webdataset'] = None\n"
              f"from streamnorm import engine\n"
              f"print(engine.compute([{str(tmp_path)!r}]).stats.mean.tolist())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert json.loads(out) == pixels(images).mean(axis=0).tolist()


def test_split_key_follows_webdatasets_convention():
    assert split_key("a/b/0001.seg.PNG") == ("a/b/0001", "seg.png")
    assert split_key("0001") == ("0001", "")


def test_open_source_describes_one_shard_per_tar(tmp_path):
    write_shards(tmp_path, np.random.default_rng(10), 2, 2)
    src = open_source([str(tmp_path)])
    assert [s.id for s in src.shards] == [f"webdataset:{s.files[0].url}" for s in src.shards]
    assert [s.files[0].name for s in src.shards] == ["train-000.tar", "train-001.tar"]
    assert "key" not in src.describe()["options"]  # as before: old checkpoints still resume
    assert open_source([str(tmp_path)], key="png").describe()["options"]["key"] == "png"


# -- brace expansion (against the braceexpand package that webdataset uses) ------------------

_atom = st.text(alphabet="abxy_-", min_size=0, max_size=3)


@st.composite
def brace_patterns(draw, depth=0):
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        choice = draw(st.integers(0, 2 if depth < 2 else 0))
        if choice == 0:
            parts.append(draw(_atom))
        elif choice == 1:
            lo = draw(st.integers(0, 12))
            hi = draw(st.integers(0, 12))
            pad = draw(st.sampled_from(["", "0", "00"]))
            parts.append(f"{{{pad}{lo}..{hi}}}" if pad == "" or lo < 10 else f"{{{lo}..{hi}}}")
        else:
            alts = draw(st.lists(brace_patterns(depth + 1), min_size=2, max_size=3))
            parts.append("{" + ",".join(alts) + "}")
    return "".join(parts)


@settings(max_examples=300, deadline=None)
@given(pattern=brace_patterns())
def test_expand_braces_matches_braceexpand(pattern):
    assert expand_braces(pattern) == list(braceexpand.braceexpand(pattern))


@pytest.mark.parametrize("bad", ["a{1..3", "a}b", "x{a,b"])
def test_unbalanced_braces_are_refused(bad):
    with pytest.raises(SourceError, match="unbalanced"):
        expand_braces(bad)
