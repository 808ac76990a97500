"""The offline modules' doctests leave no temporary folders behind (issue 8, item 24)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from offline_helpers import SRC

MODULES = ["engine", "sources", "sources.base", "sources.registry", "sources._decode",
           "sources.tiff", "report", "cli", "_png"]


@pytest.mark.parametrize("module", MODULES)
def test_doctests_leave_no_temp_folders(tmp_path, module):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=SRC + os.pathsep + os.environ.get(
        "PYTHONPATH", ""))
    code = (f"import doctest, sys, streamnorm.{module} as m; "
            f"r = doctest.testmod(m, optionflags=doctest.ELLIPSIS); "
            f"sys.exit(1 if r.failed or not r.attempted else 0)")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not list(tmp.iterdir()), f"left behind: {sorted(p.name for p in tmp.iterdir())}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
