"""``streamnorm compute`` checks that the store is writable before the pass (issue 8, item 19)."""

from __future__ import annotations

import numpy as np

from offline_helpers import run_cli, write_table


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_unwritable_store_is_refused_before_any_data_is_read(tmp_path):
    # item 19: the source is broken, so an error about it means the data was read first
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's parent folder should be")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    res = run_cli("compute", str(broken), "--store", str(blocker / "store"), "--split", "train",
                  "--no-progress")
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert f"{blocker / 'store'}: cannot write to the store" in line
    assert "broken.parquet" not in line and "--store" in line


def test_unwritable_store_with_good_data(tmp_path):
    write_table(tmp_path / "t.parquet", np.random.default_rng(0), rows=50, row_group_size=10)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    res = run_cli("compute", str(tmp_path / "t.parquet"), "--store", str(blocker / "a" / "b"),
                  "--split", "train", "--no-progress")
    assert res.returncode == 1 and res.stdout == ""
    assert "cannot write to the store" in one_line(res.stderr)


def test_store_check_leaves_nothing_behind(tmp_path):
    write_table(tmp_path / "t.parquet", np.random.default_rng(0), rows=50, row_group_size=10)
    root = tmp_path / "new" / "stats"
    res = run_cli("compute", str(tmp_path / "t.parquet"), "--store", str(root), "--split",
                  "train", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in root.iterdir()) == ["split=train"]
    # a run that fails on its data leaves no folder created by the check
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    other = tmp_path / "other" / "stats"
    res = run_cli("compute", str(bad), "--store", str(other), "--split", "train",
                  "--no-progress")
    assert res.returncode == 1 and "bad.parquet" in one_line(res.stderr)
    assert not (tmp_path / "other").exists()
