"""Every ```python block of the README runs as written, and cleans up after itself."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_and_leaves_nothing_behind(index, tmp_path):
    work, scratch = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"README block {index} failed:\n{BLOCKS[index]}\n{proc.stderr}"
    left = sorted(p.name for p in [*work.iterdir(), *scratch.iterdir()])
    assert left == [], f"README block {index} left files behind: {left}"


def test_readme_setup_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_cmd = 'python3 -m pip install torch==2.13.0 -e ".[dev]" && python3 -m pytest'
    assert test_cmd in text
    assert 'python3 -m pip install -q torch==2.13.0 -e ".[dev]"' in ci and "python3 -m pytest" in ci
    assert "python3 -m pip install torch==2.13.0 -e . && streamnorm demo" in text
