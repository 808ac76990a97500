"""The ``streamnorm`` command line: outputs, exit codes, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamnorm as sn
from offline_helpers import png_bytes, run_cli, write_images, write_table
from streamnorm.cli import main


def cli(capsys, *args):
    """Run main() in-process: (exit status, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exc:        # argparse usage errors and --help
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(5)
    tables = tmp_path / "tables"
    tables.mkdir()
    cols = write_table(tables / "train.parquet", rng, rows=500, row_group_size=50)
    write_table(tables / "test.parquet", rng, rows=500, row_group_size=50)
    images = tmp_path / "images"
    write_images(images / "train", 6, rng)
    write_images(images / "test", 6, rng, shift=40)
    return {"tmp": tmp_path, "tables": tables, "images": images, "cols": cols}


def compute(capsys, data, split, source, *extra):
    return cli(capsys, "compute", str(source), "--store", str(data["tmp"] / "store"),
               "--split", split, "--no-progress", *extra)


# -- compute -------------------------------------------------------------------


def test_compute_parquet_then_show_formats(capsys, data):
    code, out, err = compute(capsys, data, "train", data["tables"] / "train.parquet")
    assert code == 0, err
    assert "saved split 'train'" in out and "500 rows" in out and "1 shard," in out
    assert one_line_error(err) == ("streamnorm: note: left out 1 non-numeric column: name (string) "
                                   "(choose columns with --columns, or --image-column for encoded "
                                   "images)")
    store = sn.StatsStore(data["tmp"] / "store")
    stats = store.load("train")
    assert stats.feature_names == ("i32", "u8", "f32", "f64")
    np.testing.assert_allclose(stats.mean, [data["cols"][c].astype(float).mean()
                                            for c in stats.feature_names], rtol=1e-12)
    assert store.metadata("train")["source"]["rows"] == 500

    code, out, _ = cli(capsys, "show", str(data["tmp"] / "store"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("split train: 4 features")
    assert lines[1].split() == ["feature", "count", "mean", "std", "min", "max", "nan_count"]
    assert lines[2].split()[:2] == ["i32", "500"]

    code, out, _ = cli(capsys, "show", str(data["tmp"] / "store"), "--format", "json")
    doc = json.loads(out)
    row = doc["train"]["features"][2]
    assert row["feature"] == "f32" and row["mean"] == stats.mean[2] and row["std"] == stats.std[2]

    code, out, _ = cli(capsys, "show", str(data["tmp"] / "store"), "--split", "train",
                       "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["feature"] for r in rows] == list(stats.feature_names)
    assert float(rows[3]["max"]) == stats.max[3] and int(rows[0]["count"]) == 500


def test_compute_images_with_histogram_shows_quantiles(capsys, data):
    code, _, err = compute(capsys, data, "train", data["images"] / "train", "--histogram",
                           "--workers", "1")
    assert code == 0, err
    code, out, _ = cli(capsys, "show", str(data["tmp"] / "store"), "--format", "json")
    feats = json.loads(out)["train"]["features"]
    stats = sn.load_stats(data["tmp"] / "store", "train")
    assert [f["median"] for f in feats] == stats.median.tolist()
    code, out, _ = cli(capsys, "show", str(data["tmp"] / "store"))
    assert out.splitlines()[1].split()[-3:] == ["q25", "median", "q75"]


def test_diff_flags_the_drifted_split(capsys, data):
    for split in ("train", "test"):
        assert compute(capsys, data, split, data["images"] / split, "--histogram",
                       "--workers", "1")[0] == 0
    root = str(data["tmp"] / "store")
    code, out, _ = cli(capsys, "diff", root, "train", "test", "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["base"] == "train" and doc["other"] == "test" and doc["threshold"] == 0.1
    assert doc["flagged"] == ["0", "1", "2"]
    assert all(f["ks"] > 0.1 and f["smd"] > 0.1 for f in doc["features"])
    code, out, _ = cli(capsys, "diff", root, "train", "train")
    assert code == 0 and "0 of 3 features beyond the threshold" in out
    assert "smd" in out.splitlines()[1] and "mean(train)" in out.splitlines()[1]
    code, out, _ = cli(capsys, "diff", root, "train", "test", "--threshold", "5")
    assert "0 of 3" in out


def test_plot_writes_a_png(capsys, data):
    from PIL import Image

    for split in ("train", "test"):
        compute(capsys, data, split, data["images"] / split, "--histogram", "--workers", "1")
    out_png = data["tmp"] / "plots" / "stats.png"
    code, _out, err = cli(capsys, "plot", str(data["tmp"] / "store"), "--out", str(out_png))
    assert code == 0, err
    assert out_png.stat().st_size > 10_000
    with Image.open(out_png) as im:
        assert im.format == "PNG" and im.size[0] >= 500 and im.size[1] >= 500


def test_plot_without_matplotlib_says_what_to_install(capsys, data, monkeypatch):
    compute(capsys, data, "train", data["tables"] / "train.parquet")
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = cli(capsys, "plot", str(data["tmp"] / "store"), "--out",
                       str(data["tmp"] / "x.png"))
    assert code == 1
    assert "pip install 'streamnorm[plot]'" in one_line_error(err)
    assert not (data["tmp"] / "x.png").exists()


def test_checkpoint_and_dask_through_the_cli(capsys, data):
    ckpt = str(data["tmp"] / "ckpt")
    code, out, err = compute(capsys, data, "train", data["tables"], "--checkpoint", ckpt)
    assert code == 0, err
    code, out, err = compute(capsys, data, "again", data["tables"], "--checkpoint", ckpt)
    assert code == 0 and "from the checkpoint" in out
    store = sn.StatsStore(data["tmp"] / "store")
    assert store.load("again").equals(store.load("train"))
    code, _, err = compute(capsys, data, "other", data["tables"], "--checkpoint", ckpt,
                           "--columns", "u8")
    assert code == 1 and "different" in one_line_error(err)


def test_dask_local_cluster_from_the_cli(capsys, data):
    code, _, err = compute(capsys, data, "dask", data["tables"], "--engine", "dask",
                           "--workers", "1")
    assert code == 0, err
    code, _, err = compute(capsys, data, "local", data["tables"])
    store = sn.StatsStore(data["tmp"] / "store")
    assert store.load("dask").equals(store.load("local"))


# -- errors ----------------------------------------------------------------------


def test_data_errors_are_one_line_exit_1(capsys, data):
    tmp = data["tmp"]
    (tmp / "fake.parquet").write_bytes(b"PAR1 garbage")
    (tmp / "data.csv").write_text("a,b\n1,2\n")
    pq.write_table(pa.table({"s": ["x", "y"]}), tmp / "strings.parquet")
    (tmp / "dangling").mkdir()
    (tmp / "dangling" / "gone.parquet").symlink_to(tmp / "nowhere.parquet")   # unreadable
    bad_images = tmp / "bad_images"
    write_images(bad_images, 2, np.random.default_rng(0))
    (bad_images / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    cases = [
        ([str(tmp / "missing.parquet")], "missing.parquet: no such file or directory"),
        ([str(tmp / "fake.parquet")], "fake.parquet: not a readable Parquet file"),
        ([str(tmp / "data.csv")], "data.csv: not a Parquet, image (PNG, JPEG, BMP, GIF, WebP, TIFF), .npy"),
        ([str(tmp / "dangling")], "gone.parquet: not a readable Parquet file"),
        ([str(tmp / "strings.parquet")], "strings.parquet: no numeric columns"),
        ([str(bad_images), "--workers", "1"], "corrupt.png: cannot decode image"),
        ([str(data["tables"]), "--columns", "nope"], "has no column 'nope'"),
    ]
    for args, expected in cases:
        code, _out, err = compute(capsys, data, "x", *args)
        assert code == 1, (args, err)
        line = one_line_error(err)
        assert line.startswith("streamnorm: error: ") and expected in line, line
    assert not (tmp / "store").exists() or "x" not in sn.StatsStore(tmp / "store").splits()


def test_skip_bad_counts_undecodable_images(capsys, data):
    bad = data["tmp"] / "bad"
    write_images(bad, 4, np.random.default_rng(0))
    (bad / "b" / "zz.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    code, out, err = compute(capsys, data, "train", bad, "--skip-bad", "--workers", "1")
    assert code == 0
    assert "skipped 1 undecodable image:" in one_line_error(err) and "zz.jpg" in err
    assert "4 images" in out and "1 skipped" in out


def test_existing_split_needs_overwrite(capsys, data):
    assert compute(capsys, data, "train", data["tables"])[0] == 0
    code, _, err = compute(capsys, data, "train", data["tables"])
    assert code == 1 and "already has split 'train'" in one_line_error(err)
    assert "--overwrite" in err
    assert compute(capsys, data, "train", data["tables"], "--overwrite")[0] == 0


def test_usage_errors_are_one_line_exit_2(capsys, data):
    store = str(data["tmp"] / "store")
    src = str(data["tables"])
    cases = [
        (["compute", src, "--store", store, "--split", "../up"], "invalid split name"),
        (["compute", src, "--store", store, "--split", "a/b"], "invalid split name"),
        (["compute", src, "--store", store], "--split"),
        (["compute", src, "--store", store, "--split", "x", "--layout", "nchw"], "--layout"),
        (["compute", src, "--store", store, "--split", "x", "--workers", "0"], "--workers"),
        (["compute", src, "--store", store, "--split", "x", "--scheduler", "tcp://h:1"],
         "--engine dask"),
        (["compute", src, "--store", store, "--split", "x", "--nan-policy", "skip"],
         "--nan-policy"),
        (["compute", src, "--store", store, "--split", "x", "--storage-options", "{bad"],
         "JSON"),
        (["show", store, "--split", "no good"], "invalid split name"),
        (["diff", store, "train"], "OTHER"),
        (["diff", store, "a", "b", "--threshold", "-1"], "--threshold"),
        (["frobnicate"], "invalid choice"),
        ([], "COMMAND"),
    ]
    for args, expected in cases:
        code, _out, err = cli(capsys, *args)
        assert code == 2, (args, err)
        assert expected in one_line_error(err), (args, err)


def test_show_and_diff_data_errors(capsys, data):
    empty = str(data["tmp"] / "nothing-here")
    code, _, err = cli(capsys, "show", empty)
    assert code == 1 and "no statistics found" in one_line_error(err)
    compute(capsys, data, "train", data["tables"] / "train.parquet")
    compute(capsys, data, "img", data["images"] / "train", "--workers", "1")
    root = str(data["tmp"] / "store")
    code, _, err = cli(capsys, "diff", root, "train", "missing")
    assert code == 1 and "'missing'" in one_line_error(err)
    code, _, err = cli(capsys, "diff", root, "train", "img")
    assert code == 1 and "features differ" in one_line_error(err)
    (data["tmp"] / "store" / "split=broken").mkdir()
    (data["tmp"] / "store" / "split=broken" / "stats.parquet").write_bytes(b"junk")
    code, _, err = cli(capsys, "show", root, "--split", "broken")
    assert code == 1 and "split=broken" in one_line_error(err)


def test_debug_shows_the_traceback(capsys, data):
    code, _, err = cli(capsys, "compute", str(data["tmp"] / "nope"), "--store", "s",
                       "--split", "x", "--debug")
    assert code == 1 and "Traceback" in err and err.strip().endswith("no such file or directory")


def test_help_has_examples(capsys):
    for args in (["--help"], ["compute", "--help"], ["diff", "--help"]):
        code, out, _ = cli(capsys, *args)
        assert code == 0 and "examples:" in out


# -- subprocesses: the real entry point --------------------------------------------


def test_subprocess_exit_codes_and_no_traceback(tmp_path):
    (tmp_path / "x.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8))[:20])
    proc = run_cli("compute", str(tmp_path / "x.png"), "--store", str(tmp_path / "s"),
                   "--split", "t")
    assert proc.returncode == 1 and proc.stdout == ""
    assert one_line_error(proc.stderr).startswith("streamnorm: error: ")
    assert "x.png: cannot decode image" in proc.stderr
    proc = run_cli("compute", str(tmp_path), "--store", str(tmp_path / "s"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_demo_end_to_end(tmp_path):
    started = time.monotonic()
    proc = run_cli("demo", "--workdir", str(tmp_path / "demo"), "--no-progress")
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 60
    out = proc.stdout
    assert "one DeviceLoader epoch" in out and "expect 0 and 1" in out
    assert "tabular  test  vs train: flagged income" in out
    images = sn.StatsStore(tmp_path / "demo" / "stats" / "images")
    assert images.splits() == ["test", "train", "val"]
    train = images.load("train")
    assert train.layout == "NHWC" and train.histogram is not None and train.count[0] == 48 * 32 * 32
    tabular = sn.StatsStore(tmp_path / "demo" / "stats" / "tabular").load("train")
    assert tabular.feature_names == ("age", "income", "clicks", "score")
    assert tabular.nan_count[3] > 0 and tabular.count[3] + tabular.nan_count[3] == 4000
    line = next(ln for ln in out.splitlines() if "normalized per-channel mean" in ln)
    mean = json.loads(line.split("mean ")[1].split(",  std")[0].split("], std")[0] + "]")
    assert np.allclose(mean, 0, atol=1e-4)
