"""What the command line says (issue 8, item 21): flags instead of Python arguments,
ranges, plurals, ``--skip-bad`` hints, and nothing left out without a word."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnorm as sn
from offline_helpers import decoded_rgb, png_bytes, run_cli, write_images
from streamnorm.sources import BadRecordError, decode_image, open_source

#: Python-API spellings that must never reach a command-line user.
API_WORDS = re.compile(r"\b[a-z_]+=(True|False|['\"])|StatsStore\.|\bpass [a-z_]+=")


def speak_flags(message: str) -> str:
    from streamnorm.cli import speak_flags as speak

    return speak(message)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def cli_error(*args: str) -> str:
    res = run_cli(*args)
    assert res.returncode == 1, (res.stdout, res.stderr)
    line = one_line(res.stderr)
    assert not API_WORDS.search(line), line
    return line


# -- flags, not Python arguments ---------------------------------------------------


@pytest.mark.parametrize("message, wanted", [
    ("batch 0 has dtype float32, but histogram=True needs 8-bit integer data (uint8, int8 or "
     "bool); pass histogram=False for other dtypes", "drop --histogram for other dtypes"),
    ("fix the data, or pass nan_policy='omit' to skip such values (they are counted in "
     "nan_count) or nan_policy='propagate' to let them through",
     "pass --nan-policy omit to skip such values"),
    ("use nan_policy='omit' (--nan-policy omit) to skip", "use --nan-policy omit to skip"),
    ("split 'train' already exists at x; pass overwrite=True to replace it",
     "pass --overwrite to replace it"),
    ("(saved splits: none); save it first with StatsStore.save",
     "create it first with: streamnorm compute SOURCE --store ROOT --split NAME"),
    ("it is truncated or corrupt, write it again with StatsStore.save",
     "write it again with: streamnorm compute SOURCE --store ROOT --split NAME --overwrite"),
    ("select columns of one 8-bit type, or drop histogram=True", "or drop --histogram"),
])
def test_library_messages_are_said_with_flags(message, wanted):
    said = speak_flags(message)
    assert wanted in said and not API_WORDS.search(said), said


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(["histogram", "overwrite", "skip_bad"]), value=st.booleans(),
       before=st.from_regex(r"([a-z ]*[ ;,.(])?", fullmatch=True),
       after=st.from_regex(r"([ ;,.)][a-z ]*)?", fullmatch=True))
def test_no_boolean_argument_survives(name, value, before, after):
    said = speak_flags(f"{before} pass {name}={value}{after}")
    assert f"{name}=" not in said
    assert "--" + name.replace("_", "-") in said


@pytest.mark.parametrize("message", ["ddof=True is not an integer", "threads=False",
                                     "got dtype='float32'"])
def test_arguments_without_a_flag_are_left_alone(message):
    # only arguments the command line has a flag for are translated
    assert speak_flags(message) == message


def test_missing_split_speaks_the_compute_command(tmp_path):
    root = tmp_path / "store"
    sn.StatsStore(root).save(sn.compute_stats([np.ones((2, 1))], layout="NF"), "train")
    line = cli_error("diff", str(root), "train", "test")
    assert "create it first with: streamnorm compute SOURCE --store ROOT --split NAME" in line


def test_non_finite_and_null_values_speak_nan_policy(tmp_path):
    pq.write_table(pa.table({"x": [1.0, np.nan, 3.0]}), tmp_path / "f.parquet")
    pq.write_table(pa.table({"k": pa.array([1, None, 3], pa.int32())}), tmp_path / "i.parquet")
    for name in ("f.parquet", "i.parquet"):
        line = cli_error("compute", str(tmp_path / name), "--store", str(tmp_path / "s"),
                         "--split", "t", "--no-progress")
        assert "--nan-policy omit" in line and name in line


def test_undecodable_image_error_mentions_skip_bad(tmp_path):
    write_images(tmp_path / "img", 2, np.random.default_rng(0))
    (tmp_path / "img" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    line = cli_error("compute", str(tmp_path / "img"), "--store", str(tmp_path / "s"),
                     "--split", "t", "--no-progress", "--workers", "1")
    assert "broken.png: cannot decode image" in line and "pass --skip-bad" in line


# -- ranges and plurals ------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(groups=st.integers(1, 6), per_shard=st.integers(1, 7))
def test_row_group_ranges_are_inclusive(tmp_path_factory, groups, per_shard):
    path = tmp_path_factory.mktemp("rg") / "t.parquet"
    pq.write_table(pa.table({"x": np.arange(groups * 10, dtype=np.float64)}), path,
                   row_group_size=10)
    size = pq.ParquetFile(path).metadata.row_group(0).column(0).total_compressed_size
    src = open_source([path], shard_bytes=size * per_shard)
    covered = []
    for shard in src.shards:
        text = shard.where.split("(")[-1].rstrip(")")
        first, _, last = text.removeprefix("row groups ").removeprefix("row group ").partition("-")
        lo, hi = int(first), int(last or first)
        assert text == (f"row group {lo}" if lo == hi else f"row groups {lo}-{hi}")
        covered.extend(range(lo, hi + 1))
    assert covered == list(range(groups))


def test_nan_error_names_the_row_groups_it_read(tmp_path):
    x = np.arange(30, dtype=np.float64)
    x[25] = np.nan
    pq.write_table(pa.table({"x": x}), tmp_path / "t.parquet", row_group_size=10)
    line = cli_error("compute", str(tmp_path / "t.parquet"), "--store", str(tmp_path / "s"),
                     "--split", "t", "--no-progress")
    assert "t.parquet (row groups 0-2)" in line


def test_one_feature_is_singular(tmp_path):
    pq.write_table(pa.table({"x": [1.0, 2.0]}), tmp_path / "t.parquet")
    res = run_cli("compute", str(tmp_path / "t.parquet"), "--store", str(tmp_path / "s"),
                  "--split", "train", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert ": 1 feature (NF, float64), 2 rows, 1 shard," in res.stdout
    res = run_cli("show", str(tmp_path / "s"))
    assert res.stdout.startswith("split train: 1 feature, layout NF")


# -- nothing left out silently -------------------------------------------------------


def test_non_numeric_columns_are_reported(tmp_path):
    pq.write_table(pa.table({"x": [1.0, 2.0], "name": ["a", "b"], "flag": [True, False]}),
                   tmp_path / "t.parquet")
    res = run_cli("compute", str(tmp_path / "t.parquet"), "--store", str(tmp_path / "s"),
                  "--split", "train", "--no-progress")
    assert res.returncode == 0
    assert one_line(res.stderr) == (
        "streamnorm: note: left out 2 non-numeric columns: name (string), flag (bool) "
        "(choose columns with --columns, or --image-column for encoded images)")
    res = run_cli("compute", str(tmp_path / "t.parquet"), "--store", str(tmp_path / "s"),
                  "--split", "x", "--no-progress", "--columns", "x")
    assert res.returncode == 0 and res.stderr == ""


def test_files_of_other_types_are_reported(tmp_path):
    write_images(tmp_path / "img", 2, np.random.default_rng(0))
    (tmp_path / "img" / "a" / "notes.txt").write_text("hello")
    (tmp_path / "img" / "labels.csv").write_text("a,b\n")
    (tmp_path / "img" / ".hidden").write_text("")
    res = run_cli("compute", str(tmp_path / "img"), "--store", str(tmp_path / "s"),
                  "--split", "train", "--no-progress")
    assert res.returncode == 0, res.stderr
    line = one_line(res.stderr)
    assert line.startswith("streamnorm: note: ignored 2 files of other types in the folders: ")
    assert "notes.txt" in line and "labels.csv" in line and ".hidden" not in line


@pytest.mark.parametrize("fmt, suffix", [("BMP", ".bmp"), ("GIF", ".gif"), ("WEBP", ".webp"),
                                          ("TIFF", ".tif"), ("TIFF", ".tiff")])
def test_other_image_formats_are_decoded(tmp_path, fmt, suffix):
    rng = np.random.default_rng(1)
    folder = tmp_path / "img"
    folder.mkdir()
    paths = []
    for k in range(3):
        array = rng.integers(0, 256, (5, 6, 3)).astype(np.uint8)
        extra = {"lossless": True} if fmt == "WEBP" else {}
        from PIL import Image

        path = folder / f"{k}{suffix}"
        Image.fromarray(array).save(path, fmt, **extra)
        paths.append(path)
    res = run_cli("compute", str(folder), "--store", str(tmp_path / "s"), "--split", "train",
                  "--no-progress")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    oracle = sn.compute_stats([decoded_rgb(p)[None] for p in paths], layout="NHWC")
    assert sn.load_stats(tmp_path / "s", "train").equals(oracle)


def test_multi_frame_images_are_refused():
    import io

    from PIL import Image

    frames = [Image.new("RGB", (4, 4), (k, k, k)) for k in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(BadRecordError, match=r"anim\.gif: cannot decode image \(GIF file with 2 "
                                             r"frames"):
        decode_image(buf.getvalue(), "RGB", "anim.gif")
    assert decode_image(png_bytes(np.zeros((2, 2, 3), np.uint8)), "RGB").shape == (2, 2, 3)
